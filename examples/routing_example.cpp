// Route a few tokens with TopK<2, Softmax>, add the aux and z-losses, and run backward
// (docs/routing.md quotes this file).
#include <cstdio>
#include <vector>

#include <switchyard/routing.hpp>

namespace sy = switchyard;

int main() {
  constexpr sy::index_t T = 3, E = 4;
  const std::vector<double> logits = {1.0, 0.5, -0.3, 2.0,    // token 0
                                      0.2, 1.7, 0.9,  -1.0,   // token 1
                                      -0.4, 0.1, 1.3, 0.8};   // token 2

  sy::RouterParams p;
  p.num_experts = E;
  p.losses.balance = {{sy::LoadBalancingType::aux_loss, 1e-2}};
  p.losses.z_loss_coeff = 1e-3;
  const sy::TopK<2, sy::Softmax> router(p);

  const sy::Routing<double> r =
      router.forward(sy::exec::Host{}, sy::matrix_view<const double>(logits.data(), T, E));
  // r.indices() [T][2] (int32) and r.probs() [T][2] go to the dispatcher.
  for (sy::index_t t = 0; t < T; ++t)
    std::printf("token %lld: expert %d (%.4f), expert %d (%.4f)\n", static_cast<long long>(t),
                r.indices()(t, 0), r.probs()(t, 0), r.indices()(t, 1), r.probs()(t, 1));
  std::printf("aux loss %.9f, z-loss %.9f\n", *r.aux_loss, *r.z_loss);

  // Backward: d(prob) of the selected routes -> d(logits), loss gradients included.
  const std::vector<double> dprob(T * 2, 1.0);
  std::vector<double> dlogits(T * E);
  router.backward(sy::exec::Host{}, r, sy::matrix_view<const double>(dprob.data(), T, 2),
                  sy::matrix_view<double>(dlogits.data(), T, E));
  std::printf("dlogits[0] = %.6g %.6g %.6g %.6g\n", dlogits[0], dlogits[1], dlogits[2], dlogits[3]);
  return 0;
}
