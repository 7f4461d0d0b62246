"""``kill -9`` in the middle of a checkpoint save leaves the previous checkpoints intact."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

import trimtune as tt
from trimtune.training.checkpoint import list_checkpoints, read_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"

# Trains a small LoRA model, checkpointing every step; the third checkpoint's save writes half a
# file, says so through a marker file, and hangs there until the test kills the process.
SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    import trimtune as tt
    import trimtune.core.io.atomic as atomic

    directory, marker = Path(sys.argv[1]), Path(sys.argv[2])
    real_save, calls = atomic.save_file, [0]

    def slow_save(tensors, path, metadata=None):
        calls[0] += 1
        if calls[0] == 5:  # two files per checkpoint: the first file of checkpoint 3
            Path(path).write_bytes(b"half a safetensors file")
            marker.write_text(str(path))
            time.sleep(120)
        real_save(tensors, path, metadata=metadata)

    atomic.save_file = slow_save
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    tt.apply(model, tt.LoraConfig(r=2, targets=["0", "2"], init="gaussian"))
    data = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(10)]
    tt.train(model, data, epochs=1, progress=False, loss_fn=torch.nn.functional.cross_entropy,
             checkpoint=tt.CheckpointConfig(directory, every=1, keep=5))
""")


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    directory, marker = tmp_path / "ckpt", tmp_path / "saving"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(directory), str(marker)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the save never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    assert Path(marker.read_text()).exists()  # the half-written file is really there, in a temp dir
    assert [p.name for p in list_checkpoints(directory)] == ["step-00000001", "step-00000002"]
    assert len(list(directory.glob(".step-00000003*.tmp"))) == 1
    tensors, state = read_checkpoint(directory / "step-00000002")
    assert state["step"] == 2 and len(tensors) == 4  # lora_A and lora_B of two layers

    # a resumed run continues from step 2 and clears the partial save away
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    tt.apply(model, tt.LoraConfig(r=2, targets=["0", "2"], init="gaussian"))
    data = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(10)]
    result = tt.train(model, data, epochs=1, progress=False, loss_fn=nn.functional.cross_entropy,
                      checkpoint=tt.CheckpointConfig(directory, every=1, keep=5), resume=True)
    assert result.steps == 10 and len(result.losses) == 10
    assert not list(directory.glob(".*.tmp"))
    assert [p.name for p in list_checkpoints(directory)][-1] == "step-00000010"
