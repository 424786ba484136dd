"""Run one training phase with the library's Trainer under torchrun/horovodrun and dump, per
rank, what the test compares: a checksum of every weight and the subnets sampled."""
import hashlib
import json
import sys
from pathlib import Path


from moofa.distributed import init_backend
from moofa.run import Run
from moofa.training.trainer import Trainer

config, model_configs, step, phase, out = sys.argv[1:6]
backend = init_backend("cpu")
trainer = Trainer(Run.load(config, model_configs), step, int(phase), backend)
sampled = []
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
