"""Run one training phase with the library's Trainer (or, with step ``finetune``, the fine-tuning
of the subnet given in place of the phase) under torchrun/horovodrun and dump, per rank, what the
tests compare: a checksum of every weight and the subnets sampled."""
import hashlib
import json
import sys
from pathlib import Path

from moofa.distributed import init_backend
from moofa.run import Run
from moofa.training.trainer import Trainer
from moofa.workflows.finetune import FinetuneTrainer

config, model_configs, step, phase, out = sys.argv[1:6]
backend = init_backend("cpu")
run = Run.load(config, model_configs)
sampled = []
if step == "finetune":  # "phase" is the --subnet argument; there is no supernet to sample from
    trainer = FinetuneTrainer(run, phase, backend)
else:
    trainer = Trainer(run, step, int(phase), backend)
    original = trainer.supernet.sample_active_subnet

    def recording_sample(*a, **k):
        cfg_ = original(*a, **k)
        sampled.append(cfg_)
        return cfg_

    trainer.supernet.sample_active_subnet = recording_sample
trainer.run()
digest = hashlib.sha256()
for name, t in trainer.net.state_dict().items():
    digest.update(name.encode())
    digest.update(t.detach().cpu().contiguous().numpy().tobytes())
Path(out).mkdir(parents=True, exist_ok=True)
(Path(out) / f"rank{backend.rank}.json").write_text(json.dumps(
    {"rank": backend.rank, "size": backend.size, "weights": digest.hexdigest(), "sampled": sampled}))
backend.shutdown()
