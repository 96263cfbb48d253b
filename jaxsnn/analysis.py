"""Analysis of a conversion: information loss (paper Eq. 12-13, Fig. 3), firing rates (Fig. 5), fan-out, MACs,
SynOps and energy (Eq. 15), and per-site conversion error.

    acts = jaxsnn.analysis.site_activations(apply_fn, variables, x)
    loss = jaxsnn.analysis.information_loss(acts[site], stats.max[site], num_steps=32, alpha=0.8)
    rates = jaxsnn.analysis.firing_rates(trace)
    e = jaxsnn.analysis.energy(snn, trace)           # e.ratio: E_SNN / E_ANN
    err = jaxsnn.analysis.conversion_error(snn, x, trace)
"""

from jaxsnn._src.activity import (SiteError, SpikeCounts, average_firing_rate, conversion_error, firing_rates,
                                  recorded_counts, site_activations, spike_counts)
from jaxsnn._src.cost import E_AC_PJ, E_MAC_PJ, Energy, MACs, ann_macs, energy, fan_out, synops
from jaxsnn._src.information import information_loss, information_loss_surface
from jaxsnn.plotting import plot_information_loss

__all__ = [
    "E_AC_PJ", "E_MAC_PJ", "Energy", "MACs", "SiteError", "ann_macs", "average_firing_rate", "conversion_error",
    "energy", "fan_out", "firing_rates", "information_loss", "information_loss_surface", "plot_information_loss",
    "site_activations", "synops", "SpikeCounts", "recorded_counts", "spike_counts",
]
