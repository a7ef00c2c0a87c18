"""Collaborative ECOS for a fleet of client devices: one probe, many answers, one proxy from their sum.

* :mod:`.sampler`: :class:`FleetEcos`, the sampler (registered as ``fleet_ecos``), and what each simulated
  device does (:class:`DeviceAnswers`);
* :mod:`.flower`: the secure sum on Flower's SecAgg+ (imported only for a secure round on Flower).

The noise, the releases and the checks of the answers are in :mod:`ecos_lightning.protocol.fleet`.
"""

from .sampler import DeviceAnswers, FleetEcos

__all__ = ["DeviceAnswers", "FleetEcos"]
