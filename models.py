"""The models a run trains and a checkpoint folder loads, by `--arch`: the modules a team submits as network.py.

`stackgan` is the course's StackGAN++ (network.py), `galip` GALIP (network_galip.py, README "A second model").
The package (t2i/) never imports them itself: the scripts hand this table to it.
"""
from types import ModuleType

import network
import network_galip

NETWORKS: dict[str, ModuleType] = {"stackgan": network, "galip": network_galip}
