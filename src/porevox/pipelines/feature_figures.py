"""Figures of a quantified study, like the paper's Fig. 2b–e and 3b–d (PNG):

* ``trends-<labels>.png``: D, SA, φ, τ, M and G against sinter temperature per paste
  (means over VOIs with 95 % confidence intervals; φ with its log-normal fit's);
* ``strut_diameters-<labels>.png``: φ histograms with the fitted log-normal per sample;
* ``curvature-<labels>.png``: joint (G, M) distributions per sample — a kernel density
  estimate from the area-weighted histogram (a binned KDE: the histogram smoothed by
  a Gaussian of Scott's bandwidth).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

#: The paper's colours: HPA blue, HPB gold, NPC red.
COLORS = {"HPA": "tab:blue", "HPB": "goldenrod", "NPC": "tab:red"}

logger = logging.getLogger(__name__)

PANELS = (("relative_density", "relative density D", None),
          ("specific_surface_area", "specific surface area SA (µm⁻¹)", None),
          ("strut_diameter_mean", "strut diameter φ (µm)", ("strut_diameter_ci95_lo",
                                                            "strut_diameter_ci95_hi")),
          ("tortuosity", "geodesic tortuosity τ", None),
          ("mean_curvature_mean", "mean curvature M (µm⁻¹)", None),
          ("gaussian_curvature_mean", "Gaussian curvature G (µm⁻²)", None))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _ci95(values: np.ndarray) -> float:
    """Half-width of the 95 % confidence interval of the mean (t distribution)."""
    from scipy import stats

    values = values[np.isfinite(values)]
    if len(values) < 2:
        return 0.0
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def trends(table, path: Path, title: str = "") -> Path:
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for ax, (key, label, fit_ci) in zip(axes.ravel(), PANELS):
        if key not in table.columns:
            ax.set_visible(False)
            continue
        for paste, part in table.groupby("paste"):
            temps = sorted(part["temperature_c"].unique())
            means, lo, hi = [], [], []
            for t in temps:
                rows = part[part["temperature_c"] == t]
                v = rows[key].to_numpy(dtype=float)
                mean = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
                err = _ci95(v)
                means.append(mean)
                if fit_ci and len(v) == 1:   # one VOI: the fit's own interval
                    lo.append(mean - float(rows[fit_ci[0]].iloc[0]))
                    hi.append(float(rows[fit_ci[1]].iloc[0]) - mean)
                else:
                    lo.append(err)
                    hi.append(err)
            ax.errorbar(temps, means, yerr=[lo, hi], marker="o", capsize=3, label=paste,
                        color=COLORS.get(paste))
        ax.set_xlabel("sinter temperature (°C)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    return _save(fig, path, title or "features against sinter temperature (means, 95 % CI)")


def _grid(table):
    pastes = [p for p in COLORS if p in set(table["paste"])] or sorted(set(table["paste"]))
    temps = sorted(table["temperature_c"].unique())
    return pastes, temps


def _first_voi(table, paste, temp):
    rows = table[(table["paste"] == paste) & (table["temperature_c"] == temp)]
    return rows.sort_values("voi").iloc[0] if len(rows) else None


def _strut_hist(d: dict):
    """(counts, edges) of a tomogram's stored φ histogram, or None."""
    counts, edges = d.get("strut_hist_counts"), d.get("strut_hist_edges")
    if counts is None or edges is None or not np.sum(counts):
        return None
    return np.asarray(counts, float), np.asarray(edges, float)


def _upper(counts, edges, q=0.995) -> float:
    c = np.cumsum(counts) / counts.sum()
    return float(edges[1:][np.searchsorted(c, q)])


def strut_histograms(table, dists: dict, path: Path) -> Path:
    from scipy import stats

    plt = _plt()
    pastes, temps = _grid(table)
    fig, axes = plt.subplots(len(pastes), len(temps), squeeze=False,
                             figsize=(2.3 * len(temps), 2.0 * len(pastes)), sharex=True)
    hists = [h for h in (_strut_hist(d) for d in dists.values()) if h is not None]
    top = max((_upper(*h) for h in hists), default=1.0)
    for r, paste in enumerate(pastes):
        for c, temp in enumerate(temps):
            ax = axes[r, c]
            row = _first_voi(table, paste, temp)
            hist = _strut_hist(dists.get(row["id"], {})) if row is not None else None
            if hist is None:
                ax.set_axis_off()
                continue
            counts, edges = hist
            keep = edges[:-1] < top
            density = counts / counts.sum() / np.diff(edges)
            ax.stairs(density[keep], edges[:np.count_nonzero(keep) + 1], fill=True,
                      color=COLORS.get(paste, "gray"), alpha=0.5)
            mu, s = np.log(row["strut_diameter_median"]), row["strut_diameter_sigma_log"]
            if np.isfinite(mu) and s > 0:
                x = np.linspace(top / 200, top, 200)
                ax.plot(x, stats.lognorm.pdf(x, s, scale=np.exp(mu)), "k-", lw=1)
            ax.axvline(row["strut_diameter_mean"], color="k", ls="--", lw=0.8)
            ax.set_xlim(0, top)
            ax.set_title(f"{paste} {temp} °C  φ={row['strut_diameter_mean']:.3f}", fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("φ (µm)", fontsize=8)
    return _save(fig, path, "strut diameters at skeleton voxels, with the log-normal fit (mean: dashed)")


def kde_from_hist(hist: np.ndarray, g_edges: np.ndarray, m_edges: np.ndarray) -> np.ndarray:
    """A binned Gaussian KDE of the (G, M) samples: the area-weighted histogram
    smoothed with Scott's bandwidth per axis, normalised to a density."""
    from scipy import ndimage

    total = hist.sum()
    if total <= 0:
        return np.zeros_like(hist)
    gc, mc = (g_edges[:-1] + g_edges[1:]) / 2, (m_edges[:-1] + m_edges[1:]) / 2
    pg, pm = hist.sum(1) / total, hist.sum(0) / total
    sg = np.sqrt(max((pg * gc**2).sum() - (pg * gc).sum() ** 2, 0))
    sm = np.sqrt(max((pm * mc**2).sum() - (pm * mc).sum() ** 2, 0))
    n_eff = total**2 / max((hist**2).sum(), 1e-300)        # effective sample size of the weights
    factor = n_eff ** (-1 / 6)                             # Scott's rule in 2-D
    sigma = (factor * sg / np.diff(g_edges).mean(), factor * sm / np.diff(m_edges).mean())
    dens = ndimage.gaussian_filter(hist / total, sigma=[max(s, 0.5) for s in sigma], mode="constant")
    return dens / (np.diff(g_edges).mean() * np.diff(m_edges).mean())


def _quantile_range(p: np.ndarray, centres: np.ndarray, lo=0.01, hi=0.99):
    c = np.cumsum(p) / max(p.sum(), 1e-300)
    return centres[min(np.searchsorted(c, lo), len(c) - 1)], centres[min(np.searchsorted(c, hi), len(c) - 1)]


def curvature_maps(table, dists: dict, path: Path) -> Path:
    plt = _plt()
    pastes, temps = _grid(table)
    fig, axes = plt.subplots(len(pastes), len(temps), squeeze=False,
                             figsize=(2.4 * len(temps), 2.2 * len(pastes)))
    for r, paste in enumerate(pastes):
        for c, temp in enumerate(temps):
            ax = axes[r, c]
            row = _first_voi(table, paste, temp)
            d = dists.get(row["id"], {}) if row is not None else {}
            if "gm_hist_hist" not in d:
                ax.set_axis_off()
                continue
            hist, ge, me = d["gm_hist_hist"], d["gm_hist_g_edges"], d["gm_hist_m_edges"]
            dens = kde_from_hist(hist, ge, me)
            gc, mc = (ge[:-1] + ge[1:]) / 2, (me[:-1] + me[1:]) / 2
            glo, ghi = _quantile_range(hist.sum(1), gc)
            mlo, mhi = _quantile_range(hist.sum(0), mc)
            ax.contourf(gc, mc, dens.T, levels=12, cmap="viridis")
            ax.axhline(0, color="w", lw=0.5)
            ax.axvline(0, color="w", lw=0.5)
            ax.plot(row["gaussian_curvature_mean"], row["mean_curvature_mean"], "r+", ms=8)
            ax.set_xlim(glo, ghi)
            ax.set_ylim(mlo, mhi)
            ax.set_title(f"{paste} {temp} °C", fontsize=8)
            ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("G (µm⁻²)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("M (µm⁻¹)", fontsize=8)
    return _save(fig, path,
                 "joint distributions of Gaussian and mean curvature (KDE; +: area-weighted means)")


def study_figures(table, dists: dict, out_dir: Path, suffix: str = "") -> dict:
    """Every figure of a quantified study; returns their paths."""
    out_dir = Path(out_dir)
    if any(c not in table.columns or table[c].isna().all() for c in ("paste", "temperature_c")):
        logger.info("feature figures: the samples have no paste and temperature_c; figures against "
                    "temperature per paste left out")
        return {}
    if "voi" not in table.columns:
        table = table.assign(voi=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"-{suffix}" if suffix else ""
    made = {"trends": trends(table, out_dir / f"trends{tag}.png",
                             f"features against sinter temperature (labels/{suffix}; means, 95 % CI)")}
    if "strut_diameter_mean" in table.columns:
        made["strut_diameters"] = strut_histograms(table, dists, out_dir / f"strut_diameters{tag}.png")
    if "mean_curvature_mean" in table.columns:
        made["curvature"] = curvature_maps(table, dists, out_dir / f"curvature{tag}.png")
    return {k: str(v) for k, v in made.items()}


__all__ = ["curvature_maps", "kde_from_hist", "strut_histograms", "study_figures", "trends"]
