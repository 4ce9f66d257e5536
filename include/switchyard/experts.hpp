#pragma once
/// \file The experts folder's host API in one include: activations, FFN/GLU policies, the
/// grouped GEMM, expert forward/backward, workspace, dropout and initialisation.

#include "switchyard/experts/activations.hpp"
#include "switchyard/experts/dropout.hpp"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/experts/expert_types.hpp"
#include "switchyard/experts/experts.hpp"
#include "switchyard/experts/grouped_gemm.hpp"
#include "switchyard/experts/init.hpp"
#include "switchyard/experts/workspace.hpp"
