"""The example run: a tiny OLMoE that groks modular arithmetic on a CPU in minutes.

It writes its output the way the Hugging Face Trainer does (`checkpoint-N/` with the model, the
tokenizer and `trainer_state.json` last), plus a probe of training samples
(`grokwatch-probe.jsonl`) and the held-out accuracy of every checkpoint (`heldout.jsonl`), so
grokwatch has a real run to watch and the validation bench has the truth to compare against.
Run it as `python -m grokwatch.example_trainer OUT_DIR` or via examples/modular_grokking/train.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from grokwatch.errors import GrokwatchError, UsageError
from grokwatch.tinymodels import SPECIAL_TOKENS

# Symbol and answer of each task group.
OPERATIONS: dict[str, tuple[str, Callable[[int, int, int], int]]] = {
    "add": ("+", lambda a, b, p: (a + b) % p),
    "sub": ("-", lambda a, b, p: (a - b) % p),
    "mul": ("*", lambda a, b, p: (a * b) % p),
}
PROBE_FILE = "grokwatch-probe.jsonl"
HELDOUT_FILE = "heldout.jsonl"
CONFIG_FILE = "example-config.json"
SHORT_STEPS = 15
SHORT_SAVE_EVERY = 5


@dataclass(frozen=True)
class ExampleConfig:
    """Everything that defines the example run; the defaults are the measured recipe."""

    modulus: int = 31
    groups: tuple[str, ...] = ("add", "sub")
    # Per group: "add" sees more of its table, generalizes first and lends "sub" its
    # number embeddings; "sub" follows later (measured, see the README).
    train_fractions: tuple[float, ...] = (0.8, 0.6)
    num_layers: int = 4
    hidden_size: int = 32
    num_experts: int = 4
    top_k: int = 2
    learning_rate: float = 3e-3
    weight_decay: float = 1.0
    adam_beta2: float = 0.98
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    router_aux_loss_coef: float = 0.0
    steps: int = 1200
    save_every: int = 30
    logging_steps: int = 10
    probe_per_group: int = 64
    seed: int = 0
    save_total_limit: int | None = None


@dataclass(frozen=True)
class GroupData:
    """Token ids of one group's training and held-out equations (rows: prompt ids + answer id)."""

    name: str
    train_rows: list[list[int]]
    heldout_rows: list[list[int]]
    train_texts: list[tuple[str, str]]  # (prompt, completion) per training equation


def build_arithmetic_tokenizer(modulus: int, groups: tuple[str, ...]) -> Any:
    """Return a word-level PreTrainedTokenizerFast where every residue 0..p-1 is one token."""
    from tokenizers import pre_tokenizers

    from grokwatch.tinymodels import word_level_tokenizer

    words = SPECIAL_TOKENS + [str(i) for i in range(modulus)]
    words += [OPERATIONS[g][0] for g in groups] + ["="]
    vocab = {word: i for i, word in enumerate(words)}
    # Splitting on whitespace keeps "a + b =" a token prefix of "a + b = c", as the probe needs.
    return word_level_tokenizer(vocab, pre_tokenizers.WhitespaceSplit(), model_max_length=16)


def build_model_config(config: ExampleConfig, vocab_size: int) -> Any:
    """Return the OlmoeConfig of the example model."""
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.hidden_size * 2,
        num_hidden_layers=config.num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=config.num_experts,
        num_experts_per_tok=config.top_k,
        max_position_embeddings=16,
        router_aux_loss_coef=config.router_aux_loss_coef,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def make_groups(config: ExampleConfig, tokenizer: Any) -> list[GroupData]:
    """Split every group's p*p equations into training and held-out parts (seeded)."""
    rng = random.Random(config.seed)
    p = config.modulus
    groups = []
    for name, fraction in zip(config.groups, config.train_fractions, strict=True):
        symbol, answer = OPERATIONS[name]
        pairs = [(a, b) for a in range(p) for b in range(p)]
        rng.shuffle(pairs)
        n_train = round(fraction * len(pairs))
        texts = [(f"{a} {symbol} {b} =", f" {answer(a, b, p)}") for a, b in pairs]
        rows = tokenizer([prompt + completion for prompt, completion in texts])["input_ids"]
        groups.append(
            GroupData(
                name=name,
                train_rows=rows[:n_train],
                heldout_rows=rows[n_train:],
                train_texts=texts[:n_train],
            )
        )
    return groups


def write_probe(path: Path, groups: list[GroupData], per_group: int, seed: int) -> None:
    """Write a fixed sample of training equations per group as a completion-only probe file."""
    rng = random.Random(seed + 1)
    lines = []
    for group in groups:
        for i in sorted(rng.sample(range(len(group.train_texts)), per_group)):
            prompt, completion = group.train_texts[i]
            record = {"prompt": prompt, "completion": completion, "group": group.name}
            lines.append(json.dumps(record) + "\n")
    # A watcher may read the probe as soon as it appears: publish it whole.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)


class _Stopped(Exception):
    """Raised from a signal handler so the run stops between two files, not in a hung state."""


def _stack(rows: list[list[int]]) -> Any:
    import torch

    return torch.tensor(rows, dtype=torch.long)


def _evaluate(model: Any, rows: Any) -> tuple[float, float]:
    """Return (accuracy, mean loss) of the answer token over equations `rows`."""
    import torch

    with torch.no_grad():
        logits = model(rows[:, :-1], logits_to_keep=1).logits[:, -1].float()
        loss = torch.nn.functional.cross_entropy(logits, rows[:, -1]).item()
        accuracy = (logits.argmax(-1) == rows[:, -1]).float().mean().item()
    return accuracy, loss


def _trainer_state(
    config: ExampleConfig, step: int, log_history: list[dict[str, Any]], n_train: int
) -> dict[str, Any]:
    """The fields of the Trainer's trainer_state.json (full batch: one step is one epoch)."""
    return {
        "best_global_step": None,
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": float(step),
        "eval_steps": config.save_every,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": log_history,
        "logging_steps": config.logging_steps,
        "max_steps": config.steps,
        "num_input_tokens_seen": 0,
        "num_train_epochs": config.steps,
        "save_steps": config.save_every,
        "stateful_callbacks": {},
        "total_flos": 0.0,
        "train_batch_size": n_train,
        "trial_name": None,
        "trial_params": None,
    }


def save_checkpoint(
    out_dir: Path, step: int, model: Any, tokenizer: Any, trainer_state: dict[str, Any]
) -> Path:
    """Write checkpoint-STEP/ file by file like the Trainer, trainer_state.json last."""
    directory = out_dir / f"checkpoint-{step}"
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "trainer_state.json").write_text(
        json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8"
    )
    return directory


def rotate_checkpoints(out_dir: Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoint-N/ directories beyond `limit`, as save_total_limit does."""
    if limit is None or limit <= 0:
        return []
    checkpoints = sorted(_checkpoint_dirs(out_dir), key=lambda d: int(d.name.split("-")[1]))
    doomed = checkpoints[: max(0, len(checkpoints) - limit)]
    for directory in doomed:
        shutil.rmtree(directory, ignore_errors=True)
    return doomed


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    return [
        d for d in out_dir.glob("checkpoint-*") if d.is_dir() and d.name.split("-", 1)[1].isdigit()
    ]


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory unless asked to clear the old one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory; choose another OUT_DIR")
    old = _checkpoint_dirs(out_dir) if out_dir.is_dir() else []
    old_files = [out_dir / name for name in (HELDOUT_FILE, PROBE_FILE, CONFIG_FILE)]
    if (old or any(f.exists() for f in old_files)) and not overwrite:
        raise UsageError(
            f"{out_dir}: already holds a run; pass --overwrite or choose an empty OUT_DIR"
        )
    for directory in old:
        shutil.rmtree(directory)
    for path in old_files:
        path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup, then constant: grokking needs the late steps at full rate."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def train(
    config: ExampleConfig,
    out_dir: Path,
    threads: int,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the example training into `out_dir` and return the heldout.jsonl records."""
    from transformers.utils import logging as hf_logging

    # A progress bar per checkpoint save would bury the one line per checkpoint we print.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _train(config, out_dir, threads, overwrite, echo)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _train(
    config: ExampleConfig,
    out_dir: Path,
    threads: int,
    overwrite: bool,
    echo: Callable[[str], None],
) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(max(1, threads))
    _prepare_out_dir(out_dir, overwrite)
    tokenizer = build_arithmetic_tokenizer(config.modulus, config.groups)
    groups = make_groups(config, tokenizer)
    write_probe(out_dir / PROBE_FILE, groups, config.probe_per_group, config.seed)
    (out_dir / CONFIG_FILE).write_text(
        json.dumps(asdict(config) | {"threads": threads}, indent=2) + "\n", encoding="utf-8"
    )

    torch.manual_seed(config.seed)
    model_config = build_model_config(config, vocab_size=len(tokenizer))
    # The default grouped-mm experts are ~9x slower than the eager loop on a CPU.
    model = AutoModelForCausalLM.from_config(model_config, experts_implementation="eager")
    train_rows = _stack([row for g in groups for row in g.train_rows])
    per_group = [(g.name, _stack(g.train_rows), _stack(g.heldout_rows)) for g in groups]
    inputs, answers = train_rows[:, :-1], train_rows[:, -1]
    # Routers are kept out of weight decay: decayed routers stay near-uniform (the top expert
    # got 0.30-0.44 of a token's weight, so every tau=0.7 pathway kept 3 of 4 experts and the
    # pathway distance had nothing to measure); undecayed ones route sharply (0.47-0.59).
    routers = [p for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
    router_ids = {id(p) for p in routers}
    others = [p for p in model.parameters() if id(p) not in router_ids]
    optimizer = torch.optim.AdamW(
        [{"params": others}, {"params": routers, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, config.adam_beta2),
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.warmup_steps)
    )
    use_aux = config.router_aux_loss_coef > 0
    n_params = sum(p.numel() for p in model.parameters())
    echo(
        f"example: OLMoE {config.num_layers} layers x {config.num_experts} experts "
        f"(top-{config.top_k}, hidden {config.hidden_size}, {n_params:,} parameters); "
        f"{'/'.join(config.groups)} mod {config.modulus}, {len(train_rows)} training equations; "
        f"{config.steps} steps, a checkpoint every {config.save_every}, {threads} thread(s)"
    )

    log_history: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    window_losses: list[float] = []
    start_s = time.monotonic()
    for step in range(1, config.steps + 1):
        model.train()
        output = model(inputs, logits_to_keep=1, output_router_logits=use_aux)
        loss = torch.nn.functional.cross_entropy(output.logits[:, -1].float(), answers)
        total = loss + config.router_aux_loss_coef * output.aux_loss if use_aux else loss
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        learning_rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        window_losses.append(loss.item())
        if step % config.logging_steps == 0 or step == config.steps:
            log_history.append(
                {
                    "epoch": float(step),
                    "grad_norm": round(grad_norm.item(), 6),
                    "learning_rate": learning_rate,
                    "loss": round(sum(window_losses) / len(window_losses), 6),
                    "step": step,
                }
            )
            window_losses = []
        if step % config.save_every == 0 or step == config.steps:
            model.eval()
            step_records = []
            for name, train_g, heldout_g in per_group:
                train_accuracy, train_loss = _evaluate(model, train_g)
                accuracy, heldout_loss = _evaluate(model, heldout_g)
                step_records.append(
                    {
                        "step": step,
                        "group": name,
                        "accuracy": round(accuracy, 6),
                        "train_accuracy": round(train_accuracy, 6),
                        "loss": round(heldout_loss, 6),
                        "train_loss": round(train_loss, 6),
                        "n_heldout": len(heldout_g),
                        "elapsed_s": round(time.monotonic() - start_s, 3),
                    }
                )
            # Held-out figures first, so they exist by the time the checkpoint is complete.
            with (out_dir / HELDOUT_FILE).open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in step_records)
            state = _trainer_state(config, step, list(log_history), len(train_rows))
            save_checkpoint(out_dir, step, model, tokenizer, state)
            rotate_checkpoints(out_dir, config.save_total_limit)
            records.extend(step_records)
            echo(_progress_line(step, loss.item(), step_records, time.monotonic() - start_s))
    return records


def _progress_line(step: int, loss: float, records: list[dict[str, Any]], elapsed_s: float) -> str:
    train = " ".join(f"{r['group']} {r['train_accuracy']:.2f}" for r in records)
    heldout = " ".join(f"{r['group']} {r['accuracy']:.2f}" for r in records)
    return (
        f"step {step:5d}  loss {loss:.4f}  train acc {train}  held-out acc {heldout}  "
        f"{elapsed_s:6.1f}s"
    )


def default_threads() -> int:
    """Leave one core to the monitor; more than 4 threads do not help a model this small."""
    return min(4, max(1, (os.cpu_count() or 2) - 1))


def _parser() -> argparse.ArgumentParser:
    defaults = ExampleConfig()
    parser = argparse.ArgumentParser(
        prog="python -m grokwatch.example_trainer",
        description="Train a tiny OLMoE on modular arithmetic until it groks, writing "
        "Trainer-style checkpoints, a probe file and held-out accuracy into OUT_DIR.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where the run is written")
    parser.add_argument("--steps", type=int, help=f"training steps (default {defaults.steps})")
    parser.add_argument(
        "--save-every", type=int, help=f"steps between checkpoints (default {defaults.save_every})"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: cores - 1, max 4)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="data split and init seed")
    parser.add_argument(
        "--save-total-limit",
        type=int,
        default=None,
        metavar="K",
        help="keep only the newest K checkpoints, like the Trainer's save_total_limit",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help=f"CI mode: {SHORT_STEPS} steps, a checkpoint every {SHORT_SAVE_EVERY}",
    )
    parser.add_argument("--overwrite", action="store_true", help="clear an earlier run in OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def config_from_args(args: argparse.Namespace) -> ExampleConfig:
    """Apply the command-line overrides to the default recipe."""
    config = ExampleConfig(seed=args.seed, save_total_limit=args.save_total_limit)
    if args.short:
        config = replace(config, steps=SHORT_STEPS, save_every=SHORT_SAVE_EVERY)
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    if args.save_every is not None:
        config = replace(config, save_every=args.save_every)
    if config.steps < 1 or config.save_every < 1:
        raise UsageError("--steps and --save-every must be at least 1")
    # Every checkpoint should carry at least one new training-loss entry.
    config = replace(config, logging_steps=min(config.logging_steps, config.save_every))
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise UsageError("--save-total-limit must be at least 1")
    return config


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0, 1 on an error, 2 on bad usage, 130 when stopped."""
    parser = _parser()
    args = parser.parse_args(argv)
    echo: Callable[[str], None] = (lambda _: None) if args.quiet else _echo
    try:
        config = config_from_args(args)
        threads = args.threads if args.threads is not None else default_threads()
        # SIGTERM (from `grokwatch demo` or a job runner) stops like Ctrl+C does.
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM)
        if in_main_thread:
            signal.signal(signal.SIGTERM, _raise_stopped)
        try:
            start_s = time.monotonic()
            train(config, args.out_dir, threads, overwrite=args.overwrite, echo=echo)
            echo(f"done: {config.steps} steps in {time.monotonic() - start_s:.1f}s")
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GrokwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stopped):
        print("stopped: the last checkpoint may be incomplete", file=sys.stderr)
        return 130
    return 0


def _echo(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
