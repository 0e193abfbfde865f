"""SIGTERM (a scheduler's time limit, `kill`) and SIGINT (Ctrl+C) stop a run cleanly and loudly.

Training: Lightning stops at the next batch boundary on SIGTERM (and forwards it to the other
ranks); `StopOnSignal` makes SIGINT do the same, writes a final `last.ckpt` there (atomically,
through the checkpoint IO), and the pipeline then raises `Interrupted`: exit code 143 / 130 and
one line saying how to resume. A second Ctrl+C stops at once. A signal during validation writes
no checkpoint (the weights in the model may be the averaged ones); the run resumes from the
newest one written before. Under SLURM with auto-requeue, Lightning's own handling (SIGUSR1:
save and requeue) stays in place; SIGTERM then still ends the job with a checkpoint.

Evaluation: `raise_on_signals` turns SIGTERM/SIGINT into `Interrupted`; result files are
written atomically (core.checkpoint_io.write_json_atomic), so no half-written metrics remain.
"""

import signal
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mixlab.core.errors import Interrupted

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class StopOnSignal(L.Callback):
    """Stop at the next batch boundary on SIGTERM/SIGINT and write `<checkpoint_dir>/last.ckpt`."""

    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.signum: int | None = None
        self.saved: Path | None = None
        self._previous: dict[int, object] = {}
        self._since = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning has installed its SIGTERM handler by now (stop at the next batch boundary)
        self.signum, self.saved = None, None
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                self._previous.pop(signum, None)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None and time.monotonic() - self._since > 1.0:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now (not the copy a DDP launcher forwards at once)
        if self.signum is None:
            self.signum, self._since = signum, time.monotonic()
        lightning = self._previous.get(signal.SIGTERM)
        if callable(lightning):  # Lightning's handler: flags the stop, forwards it to the other ranks
            lightning(signum, frame)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self.signum = self.signum or signal.SIGTERM
        if trainer.training and not trainer.sanity_checking:  # between two training batches: a consistent state
            path = self.checkpoint_dir / "last.ckpt"
            trainer.save_checkpoint(path)
            self.saved = path

    def teardown(self, trainer, pl_module, stage) -> None:
        # Lightning restores the handlers from before fit itself; put back only what is still ours
        for signum, handler in self._previous.items():
            if handler is not None and signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)
        self._previous = {}

    def interrupted(self, step: int, epoch: int) -> Interrupted:
        name = NAMES.get(self.signum, str(self.signum))
        saved = f"checkpoint written: {self.saved}" if self.saved else "no new checkpoint (stopped outside a training step)"
        return Interrupted(
            f"training stopped by {name} at global step {step} (epoch {epoch}); {saved}. "
            "Resume: the same command with ckpt_path=last (or hydra.run.dir=<this run dir>)",
            self.signum or signal.SIGTERM,
        )


def raise_on_signals(what: str = "evaluation") -> None:
    """SIGTERM and SIGINT raise `Interrupted` (exit code 143 / 130) wherever the program is."""

    def handle(signum, frame):
        raise Interrupted(
            f"{what} stopped by {NAMES.get(signum, signum)}; no result files were written for the "
            "unfinished part (rerun the same command)",
            signum,
        )

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(signum, handle)
        except ValueError:
            pass


__all__ = ["Interrupted", "SIGTERMException", "StopOnSignal", "raise_on_signals"]
