#pragma once
/// \file The process groups of a layer over MPI: split the world by the layout (link
/// switchyard::mpi).

#include "switchyard/comm/mpi.hpp"
#include "switchyard/config/layout.hpp"

namespace switchyard {

/// The groups an MoE layer uses, as MPI communicators (owned).
struct MpiGroups {
  MpiComm expert_parallel;       ///< the token all-to-all
  MpiComm dense_data_parallel;   ///< router gradients, global counts, losses
  MpiComm expert_data_parallel;  ///< expert gradients
  MpiComm tensor_parallel;       ///< tensor-parallel experts (one rank when tp = 1)
};

/// Splits `world` (size layout.world()) into this rank's groups; collective over `world`.
inline MpiGroups make_mpi_groups(const MpiComm& world, const Layout& layout) {
  SY_EXPECTS(world.size() == layout.world(),
             detail::concat("the layout has ", layout.world(), " ranks but MPI has ",
                            world.size(), " processes"));
  const RankCoords c = layout.coords(world.rank());
  // The color names the group (the coordinates its members share), the key orders it.
  const auto color = [&](std::int64_t a, std::int64_t b, std::int64_t d) {
    return static_cast<int>((a * layout.world() + b) * layout.world() + d);
  };
  return MpiGroups{
      world.split(color(c.tp, c.dp, c.pp), static_cast<int>(c.ep)),
      world.split(color(c.tp, c.pp, 0), world.rank()),
      world.split(color(c.tp, c.ep, c.pp), static_cast<int>(c.dp)),
      world.split(color(c.ep, c.dp, c.pp), static_cast<int>(c.tp)),
  };
}

}  // namespace switchyard
