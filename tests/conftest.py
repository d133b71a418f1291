"""Shared test setup: one torch thread per test process (the machine has 2 cores and tests run with -n 2)."""

import torch as th

th.set_num_threads(1)
