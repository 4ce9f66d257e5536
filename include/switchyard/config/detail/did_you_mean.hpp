#pragma once
/// \file Edit distance and the "did you mean" suggestion for unknown names.

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace switchyard::detail {

/// Levenshtein distance between a and b.
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0u : 1u)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// The candidate closest to `word` when it is close enough to be a typo (distance at most a
/// third of the word, and at least 1 allowed), else empty.
template <class Range>
std::string closest(std::string_view word, const Range& candidates) {
  std::string best;
  std::size_t best_d = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = std::string(c);
    }
  }
  return best;
}

}  // namespace switchyard::detail
