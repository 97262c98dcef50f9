"""The reward spec (``ppo.reward``, the eval's ``gold_rm``) and its one parser; what each
kind means and how it is loaded: ``rlhf/rewards.py``. Kept apart (it imports nothing of the
project but its errors) so that the config can check a spec without importing models."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

KINDS = ("rm", "classifier", "hf", "py")
INPUTS = ("response", "prompt+response")  # what an outside classifier reads


@dataclass(frozen=True)
class RewardSpec:
    """A parsed reward spec: ``kind`` (rm, classifier, hf, py) and ``target`` ("" for the
    run's own rm/classifier; a path or hub name for rm:/hf:; ``module:function`` for py:)."""

    kind: str
    target: str = ""

    @property
    def outside(self) -> bool:
        """Whether the reward is not the run's own reward model (PPO then needs no rm stage)."""
        return not (self.kind == "rm" and not self.target)

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


def parse_reward_spec(spec: str, key: str = "ppo.reward", bare_path_is_rm: bool = False) -> RewardSpec:
    """Read a reward spec (module docstring) or raise :class:`ConfigError` naming ``key``.
    ``bare_path_is_rm``: a spec without a kind is a reward-model path (the eval's ``gold_rm``
    took one before specs existed)."""
    s = (spec or "").strip()
    if s in ("rm", "classifier"):
        return RewardSpec(s)
    kind, sep, target = s.partition(":")
    if sep and kind in ("rm", "hf"):
        if not target.strip():
            raise ConfigError(f"{key}={spec!r}: '{kind}:' needs a model folder or hub name after the colon")
        return RewardSpec(kind, target.strip())
    if sep and kind == "py":
        mod, sep2, fn = target.rpartition(":")
        if not sep2 or not mod.strip() or not fn.strip() or not fn.strip().isidentifier() \
                or not all(p.isidentifier() for p in mod.strip().split(".")):
            raise ConfigError(f"{key}={spec!r}: expected py:<module>:<function> (e.g. py:my_rewards:sentiment)")
        return RewardSpec("py", f"{mod.strip()}:{fn.strip()}")
    if bare_path_is_rm and s and kind not in ("py", "hf", "rm", "classifier"):
        return RewardSpec("rm", s)
    raise ConfigError(f"{key}={spec!r}: expected rm, classifier, rm:<path>, hf:<path or hub name> or "
                      f"py:<module>:<function>")
