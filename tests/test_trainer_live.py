"""A real `transformers.Trainer` run on a tiny MoE, watched live by a daemon subprocess.

The Trainer writes `checkpoint-N/` straight into the output directory (trainer_state.json last)
and deletes old ones (`save_total_limit=2`) while the daemon watches: every checkpoint it wrote
must end done or vanished, and done ones carry the loss the Trainer logged.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from grokwatch.export import export_text
from grokwatch.reader import Reader
from tests.helpers import all_final, query, start_daemon, statuses, wait_for, write_probe

MAX_STEPS = 24
SAVE_STEPS = 3
# Paces training like a real (slow) step so that each checkpoint lives a few seconds before
# rotation removes it; nothing synchronises on it.
STEP_PACE_S = 0.5


def _dataset(tokenizer: Any, length: int = 16) -> Any:
    import torch

    texts = [f"{a} + {b} = {a + b}" for a in range(6) for b in range(6)]

    class Sums(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.items = [tokenizer(t)["input_ids"][:length] for t in texts]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids = self.items[i] + [tokenizer.pad_token_id] * (length - len(self.items[i]))
            labels = [t if t != tokenizer.pad_token_id else -100 for t in ids]
            return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}

    return Sums()


@pytest.mark.slow
def test_trainer_run_watched_live(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from grokwatch.tinymodels import build_tokenizer, tiny_olmoe_config

    torch.set_num_threads(1)
    out = tmp_path / "out"
    out.mkdir()
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)  # the Trainer's checkpoints carry none; grokwatch looks here
    db = tmp_path / "s.db"
    daemon = start_daemon(out, db, write_probe(tmp_path / "probe.jsonl"), tmp=tmp_path)

    class Pace(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            time.sleep(STEP_PACE_S)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_olmoe_config(num_layers=2, hidden_size=32, num_experts=4, top_k=2)
    )
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=MAX_STEPS,
        save_steps=SAVE_STEPS,
        save_total_limit=2,
        logging_steps=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(tokenizer), callbacks=[Pace()])
    written = list(range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS))
    try:
        daemon.wait_ready()
        trainer.train()
        kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
        assert kept == written[-2:]
        wait_for(lambda: all_final(db, written), what="every checkpoint the Trainer wrote final")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.output()

    found = statuses(db)
    assert sorted(found) == written, daemon.output()
    assert all(len(s) == 1 and s[0] in ("done", "vanished") for s in found.values()), found
    assert found[written[-1]] == ["done"] and found[written[-2]] == ["done"]
    done = [step for step, s in found.items() if s == ["done"]]
    # trainer_loss in the metrics export: the loss the Trainer logged at each done step.
    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    reader = Reader(db)
    exported = [json.loads(line) for line in export_text(reader, "metrics", "jsonl").splitlines()]
    reader.close()
    totals = [r for r in exported if r["group"] == "__all__"]
    assert [r["step"] for r in totals] == done
    for row in totals:
        assert row["trainer_loss"] == pytest.approx(logged[row["step"]])
    failed = query(db, "SELECT kind FROM alerts WHERE kind = 'checkpoint_failed'")
    assert failed == []
