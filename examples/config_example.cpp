// Builds a config in code, checks it at compile time and at run time, and prints its layout.
#include <switchyard/switchyard.hpp>

#include <iostream>

namespace sy = switchyard;

// A Mixtral-8x7B-like layer over EP 8: a config that breaks a rule fails to compile here,
// with the rule's sentence.
constexpr sy::Config mixtral = sy::static_config<[] {
  sy::Config c;
  c.num_experts = 8;
  c.num_experts_per_token = 2;
  c.hidden_size = 4096;
  c.ffn_hidden_size = 14336;
  c.activation = sy::Activation::silu;
  c.gated = true;
  c.expert_parallel_size = 8;
  c.data_parallel_size = 2;
  c.token_dispatch = sy::TokenDispatch::capacity;
  return c;
}>::value;

int main() {
  sy::Config runtime = mixtral;
  runtime.expert_parallel_size = 3;  // 8 experts cannot be split over 3 ranks
  for (const auto& p : sy::validate(runtime)) std::cout << "invalid: " << p.message << "\n";

  const sy::Layout layout(mixtral);
  std::cout << "world " << layout.world() << ", rank 9 is EP rank " << layout.coords(9).ep
            << " of DP replica " << layout.coords(9).dp << "\n";
  std::cout << "capacity for 4096 tokens: " << sy::capacity(mixtral, 4096).value() << "\n";
  std::cout << "expert memory on rank 0: " << sy::estimate_memory(mixtral).expert_parameters
            << " bytes\n";
  return 0;
}
