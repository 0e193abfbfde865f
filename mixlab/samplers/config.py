"""The sampler's configuration checks (`DiffusionSampler.check_config`): one ConfigError naming
the key, before any net is built or any step trained. The constructors repeat the checks on their
own arguments (a system built in Python gets the same messages)."""

import math

from hydra.utils import get_class
from omegaconf import DictConfig

from mixlab.core.config import require
from mixlab.core.errors import ConfigError

FP32 = ("32", "32-true", "64", "64-true")


def _class(node, key: str, base: type, what: str, hint: str) -> type:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    try:
        cls = get_class(str(target)) if target else None
    except Exception:  # Hydra raises ImportError / ValueError variants for unknown paths
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{key}._target_", f"unknown {what} {target!r} ({hint}, or a subclass of {base.__module__}.{base.__name__})")
    return cls


def _number(value, key: str, low: float, strict: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    require(ok, key, f"must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


def _integer(value, key: str, low: int) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= low, key, f"must be an integer >= {low}, got {value!r}")
    return value


def check_sampler_config(cfg: DictConfig) -> None:
    from mixlab.samplers.energies import Energy
    from mixlab.samplers.objectives import Objective

    model = cfg.model
    _class(model.get("energy"), "model.energy", Energy, "energy", "choose model/energy=gmm25|funnel|manywell|lgcp")
    objective = _class(model.get("objective"), "model.objective", Objective, "objective",
                       "choose model/objective=tb|vargrad|db|subtb|fl_subtb|pis")
    require(model.get("policy") is not None, "model.policy", "missing (choose model/policy=pis|langevin)")
    _integer(model.get("T"), "model.T", 1)
    _number(model.get("sigma2"), "model.sigma2", 0.0)
    _integer(model.get("batch_size"), "model.batch_size", 1)
    _integer(model.get("eval_every"), "model.eval_every", 1)
    _integer(model.get("eval_n"), "model.eval_n", 2)
    _integer(model.get("eval_chunk"), "model.eval_chunk", 1)
    _number(model.get("lr_log_z"), "model.lr_log_z", 0.0)
    _number(model.get("lr_flow"), "model.lr_flow", 0.0)
    exploration = model.get("exploration") or {}
    factor = _number(exploration.get("factor", 0.0), "model.exploration.factor", 0.0, strict=False)
    decay = exploration.get("decay_steps")
    if decay is not None:
        _integer(decay, "model.exploration.decay_steps", 1)
    ls = model.get("local_search") or {}
    if ls.get("enabled", False):
        for name in ("every", "steps", "batch_size"):
            _integer(ls.get(name), f"model.local_search.{name}", 1)
        _integer(ls.get("burn_in"), "model.local_search.burn_in", 0)
        require(ls.burn_in < ls.steps, "model.local_search.burn_in", f"must be < steps ({ls.steps}), got {ls.burn_in}")
        _number(ls.get("step_size"), "model.local_search.step_size", 0.0)
        _number(ls.get("beta", 1.0), "model.local_search.beta", 0.0)
    buffer = model.get("buffer") or {}
    _integer(buffer.get("capacity", 600_000), "model.buffer.capacity", 1)
    _number(buffer.get("rank_k", 0.01), "model.buffer.rank_k", 0.0)
    require(buffer.get("draws", "independent") in ("independent", "reference"), "model.buffer.draws",
            f"must be independent or reference, got {buffer.get('draws')!r}")
    require(isinstance(buffer.get("first_add_twice", False), bool), "model.buffer.first_add_twice",
            f"must be true or false, got {buffer.get('first_add_twice')!r}")

    if objective.reparametrised:  # PIS trains on its own reparametrised forward rollouts only
        name = objective.__name__
        require(not ls.get("enabled", False), "model.local_search.enabled",
                f"{name} differentiates through its own forward rollouts; local search (backward training from a buffer) does not apply")
        require(factor == 0, "model.exploration.factor", f"{name} differentiates through its own forward rollouts; exploration does not apply (set 0)")
        require(not model.get("both_ways", False), "model.both_ways", f"{name} trains on forward rollouts only")
        require(str(model.get("vectorize", "auto")).lower() != "true", "model.vectorize",
                f"true needs a no-grad rollout; {name} differentiates through the simulation: use auto or false")
    if objective.needs_flow:
        require(model.get("flow") is not None, "model.flow",
                f"{objective.__name__} needs a state-conditional flow network (model/objective=db|subtb|fl_subtb set one); got null")

    trainer = cfg.trainer
    precision = str(trainer.get("precision", "32-true"))
    require(precision in FP32, "trainer.precision",
            f"the samplers train in fp32 (log-densities of hundreds and sums over 100 steps), got {precision!r}; use 32-true")
    accumulate = trainer.get("accumulate_grad_batches") or 1
    require(accumulate == 1, "trainer.accumulate_grad_batches",
            f"a sampler iteration is one optimizer step (forward/backward alternate by step), got {accumulate!r}; raise model.batch_size instead")
