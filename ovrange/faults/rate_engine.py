"""Error-rate campaigns on activations: many faults per trial, at many sites, each applied to the *actual* value.

A fault at a later site must corrupt the value that site computes from earlier faulty values, not its fault-free
value. OpenVINO has no bitcast, so masks are applied in numpy, and the trial is run as a cascade over the struck
sites in topological order: infer with the faulty values written so far, read the next struck site's actual
output from a probe, apply the masks there, add those writes, and so on; one last inference gives the output.
A batch of trials costs (struck sites + 1) inferences. The injection graph is the one of :class:`ScatterInjector`
(writes of any number per site).
"""

from __future__ import annotations

import numpy as np
import openvino as ov

from ovrange.compare import Judge
from ovrange.errors import ModelError
from ovrange.faults.faultlist import FaultArrays, FaultList
from ovrange.faults.formats import NumberFormat, apply_mask
from ovrange.faults.injectors import ScatterInjector, check_batchable
from ovrange.faults.inputs import InputStore
from ovrange.faults.outcomes import Outcomes
from ovrange.faults.sites import Site
from ovrange.faults.spec import CampaignSpec


class RateActivationEngine:
    """Activation error-rate trials, a batch per inference round; one compiled injection model for the whole run."""

    kind = "activations"

    def __init__(self, model: ov.Model, sites: list[Site], shapes: list[tuple[int, ...]], spec: CampaignSpec,
                 judge: Judge, config: dict | None = None):
        if not check_batchable(model, shapes, spec.batch_size):
            raise ModelError("activation error-rate campaigns need a model whose batch can change")
        self.model, self.sites, self.shapes, self.spec, self.judge = model, sites, shapes, spec, judge
        self.batch = spec.batch_size
        self.config = config
        # compiled once, kept between shards
        self.injector = ScatterInjector(model, "activations", [s.name for s in sites], shapes, self.batch, probe=True,
                                        device=spec.device, config=config)
        self.description = (f"activation error rate {spec.error_rate:g} ({spec.fault_model}): cascaded "
                            f"ScatterNDUpdate at {len(sites)} sites, {self.batch} trials per inference round")

    def run(self, plan: FaultList, pending: np.ndarray, store: InputStore, fmt: NumberFormat) -> Outcomes:
        """Run the trials ``pending`` and return their outcomes."""
        trial_inputs = plan.trial_input
        by_trial = plan.arrays.per_trial(pending)
        injector = self.injector
        golden = {}
        used = np.unique(trial_inputs[pending])
        for start in range(0, len(used), self.batch):
            chunk = used[start:start + self.batch]
            outputs, _ = injector.run(store.batch(chunk))
            picked = self.judge.pick(outputs)
            golden.update((int(i), picked[r]) for r, i in enumerate(chunk))
        parts = []
        empty = plan.arrays.take(np.zeros(0, np.int64))
        for start in range(0, len(pending), self.batch):
            part = pending[start:start + self.batch]
            faults = [by_trial.get(int(t), empty) for t in part]
            inputs = store.batch(trial_inputs[part])
            outputs = self.judge.pick(cascade(injector, inputs, faults, fmt))
            parts.append(Outcomes.judged(self.judge, golden, trial_inputs[part], outputs, part))
        return Outcomes.concat(parts)


def cascade(injector: ScatterInjector, inputs: list[np.ndarray], faults: list[FaultArrays],
            fmt: NumberFormat) -> list[np.ndarray]:
    """Outputs of ``injector`` on ``inputs`` (row r carrying ``faults[r]``), each fault applied to the value its
    site actually computes given the faults upstream of it."""
    rows = np.concatenate([np.full(len(f), r, np.int64) for r, f in enumerate(faults)])
    site, element, mask, op = (np.concatenate([getattr(f, k) for f in faults])
                               for k in ("site", "element", "mask", "op"))
    taps, where, values = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    done_rows: list[np.ndarray] = [np.zeros(0, np.int64)]
    for s in np.unique(site):  # site indices are in topological order
        _, probes = injector.run(inputs, np.concatenate(taps), np.concatenate(done_rows), np.concatenate(where),
                                 np.concatenate(values))
        here = site == s
        actual = probes[s][0].reshape(len(inputs[0]), -1)[rows[here], element[here]]
        taps.append(np.full(int(here.sum()), s, np.int64))
        done_rows.append(rows[here])
        where.append(element[here])
        values.append(apply_mask(actual, mask[here], fmt, op[here]))
    outputs, _ = injector.run(inputs, np.concatenate(taps), np.concatenate(done_rows), np.concatenate(where),
                              np.concatenate(values))
    return outputs
