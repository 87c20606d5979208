"""Training curves through DVCLive, inside the stage's own output folder."""

from __future__ import annotations

from pathlib import Path

from alol.core.errors import AlolError
from alol.core.stage import console, repair_after_kill


class LiveLog:
    """Training curves through DVCLive inside the stage's own output folder (no dvc.yaml edits)."""

    def __init__(self, folder: Path, resume: bool = False):
        from dvclive import Live
        from scmrepo.exceptions import SCMError

        if resume:
            repair_after_kill(Path(folder))
        try:
            self.live = Live(str(folder), dvcyaml=False, save_dvc_exp=False, resume=resume)
        except SCMError as err:  # DVCLive reads HEAD, which a fresh `git init` does not have yet
            raise AlolError(f"DVCLive cannot log to {folder}: {err}. Commit once (`git add -A && git commit`) "
                            "and rerun.") from err
        self.history: list[dict] = []

    def __call__(self, step: int, metrics: dict) -> None:
        self.live.step = step
        for key, value in metrics.items():
            self.live.log_metric(key, value)
        self.live.next_step()
        self.history.append({"step": step, **metrics})
        shown = {k: round(v, 4) for k, v in metrics.items() if k in ("loss", "grad_norm", "tokens_per_second")}
        console.print(f"step {step}: {shown}", highlight=False)

    def close(self) -> None:
        self.live.end()
