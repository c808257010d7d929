"""The paper's engineered features, from the measured ones: α (Bruggeman) and β."""

from __future__ import annotations

import math


def bruggeman_alpha(relative_density: float, tortuosity: float) -> float:
    """The paper's α, from τ = D^(−α): −ln τ / ln D (NaN where D is not in (0, 1) or τ
    is not a positive number)."""
    d, tau = float(relative_density), float(tortuosity)
    return -math.log(tau) / math.log(d) if 0 < d < 1 and math.isfinite(tau) and tau > 0 else math.nan


def beta_feature(mean_curvature: float, gaussian_curvature: float, strut_diameter: float) -> float:
    """The paper's β = M / (|G| · φ) (NaN where G is 0, φ not positive or one is NaN)."""
    m, g, phi = float(mean_curvature), float(gaussian_curvature), float(strut_diameter)
    return m / (abs(g) * phi) if all(map(math.isfinite, (m, g, phi))) and g != 0 and phi > 0 else math.nan


#: The engineered features and the columns that define them.
ENGINEERED = {"bruggeman_alpha": (bruggeman_alpha, ("relative_density", "tortuosity")),
              "beta": (beta_feature, ("mean_curvature_mean", "gaussian_curvature_mean",
                                      "strut_diameter_mean"))}


__all__ = ["ENGINEERED", "beta_feature", "bruggeman_alpha"]
