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
  // The color names the group: its lowest world rank (an int for any world MPI has); the key
  // orders it by the coordinate that varies inside the group.
  const auto color = [&](GroupKind kind) {
    return static_cast<int>(layout.group(kind, world.rank()).front());
  };
  return MpiGroups{
      world.split(color(GroupKind::expert_parallel), static_cast<int>(c.ep)),
      world.split(color(GroupKind::dense_data_parallel), world.rank()),
      world.split(color(GroupKind::expert_data_parallel), static_cast<int>(c.dp)),
      world.split(color(GroupKind::tensor_parallel), static_cast<int>(c.tp)),
  };
}

}  // namespace switchyard
