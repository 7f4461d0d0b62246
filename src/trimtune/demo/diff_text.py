"""Step: diff pruning of all-MiniLM-L6-v2 on the demo reviews; the task saved as a 0.5 % sparse diff."""

from __future__ import annotations

import trimtune as tt

from ..models import minilm_path
from .context import DemoContext, Step
from .lora_text import text_schedule, text_task

# The learning rates of benchmarks/diff_pruning.py (docs/benchmarks.md, "Diff pruning"), over half its
# epochs to keep the demo short (3 + 3: 72.5 % on split 0 there; 6 + 6: 77.5 %). Quick mode is for tests.
FULL = dict(sparsity_epochs=3, kept_epochs=3, lr=1e-3, lr_kept=1e-2, penalty=1e-7, batch_size=16, targets="all-linear")
QUICK = dict(sparsity_epochs=1, kept_epochs=1, lr=1e-4, lr_kept=1e-3, penalty=1e-7, batch_size=16, targets="query|value",
             n_train=16, n_test=16)
DENSITY = 0.005


def run(ctx: DemoContext) -> None:
    settings = QUICK if ctx.quick else FULL
    _, _, _, model, train_loader, test_loader = text_task(ctx, settings)

    tt.apply(model, tt.DiffConfig(density=DENSITY, penalty="l0", penalty_weight=settings["penalty"], targets=settings["targets"],
                                  modules_to_save=["classifier"]))  # the penalty trains with the model: tt.train adds it
    ctx.detail(f"  sparsity phase: dense diff over the {settings['targets']} layers, hard-concrete gates, {settings['sparsity_epochs']} epoch(s)")
    first = tt.train(model, train_loader, epochs=settings["sparsity_epochs"], optimizer=tt.diff_optimizer(model, settings["lr"]),
                     scheduler=text_schedule(settings["sparsity_epochs"], train_loader), progress=not ctx.quiet)
    kept = tt.project_diffs(model)
    ctx.detail(f"  projected to {kept['kept']:,} of {kept['total']:,} entries; fine-tuning those only")
    second = tt.train(model, train_loader, epochs=settings["kept_epochs"], optimizer=tt.diff_optimizer(model, settings["lr_kept"]),
                      scheduler=text_schedule(settings["kept_epochs"], train_loader), progress=not ctx.quiet)
    accuracy = tt.evaluate(model, test_loader, tt.accuracy)["accuracy"]
    saved = tt.save_diff(model, ctx.out_dir / "diff_artifact")
    size, dense = sum(f.stat().st_size for f in saved.iterdir()), (minilm_path() / "model.safetensors").stat().st_size

    ctx.report(f"  diff pruning at {kept['density']:.2%} of the {settings['targets']} weights (+ trained head): accuracy {accuracy:.1%}")
    ctx.report(f"  diff artifact: {size:,} bytes = {100 * size / dense:.2f} % of the dense model file ({dense:,} bytes), in {saved}")
    ctx.results["diff_text"] = dict(
        kept=kept["kept"], total=kept["total"], accuracy=accuracy, artifact_bytes=size, dense_bytes=dense,
        train_seconds=first.wall_time + second.wall_time, artifact_dir=str(saved),
    )


STEP = Step("diff_text", "Diff pruning of all-MiniLM-L6-v2: the task as a 0.5 % sparse diff", run)
