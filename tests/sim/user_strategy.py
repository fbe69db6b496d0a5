"""A user strategy defined outside sim/: cheats on every other job."""

import numpy as np


class Alternating:
    cheater = True
    crash_rate = 0.0
    rejoins = False
    guess_accuracy = 0.0

    def __init__(self, cheat_rate: float = 1.0) -> None:
        self.rate = cheat_rate

    def skip_rate(self, view):
        return np.where(view.jobs % 2 == 0, self.rate, 0.0)

    def theory_skip_rate(self, s):
        return None
