"""Session set-up shared by every test file."""

import atexit
import os
import shutil
import tempfile

# The prepared run set (cpcl_kit.experiments.prepared) lives in the user's cache; a test never reads the
# user's set, so every test process (and the notebook kernels it starts) points at an empty folder.
os.environ["CPCL_KIT_PREPARED"] = tempfile.mkdtemp(prefix="cpcl-prepared-test-")

# device="auto" (the CPU presets' setting) means the CPU in every test process and in the CLI runs
# they start, also on a machine with a GPU: the tests that compare runs bit for bit (exact resume,
# two processes agreeing) hold on the CPU only, since CUDA's interpolate/grid_sample backward and
# NLL loss are not deterministic. The CUDA tests ask for device="cuda" by name.
os.environ["CPCL_KIT_DEVICE"] = "cpu"

# The kit's cache (constants.cache_root: trained backbones, benchmark run folders) likewise: a fresh
# folder per test process, so no test reads or fills the user's ~/.cache/cpcl-kit.
os.environ["CPCL_KIT_CACHE"] = tempfile.mkdtemp(prefix="cpcl-cache-test-")

# Both folders go when the test process ends: a test session leaves nothing in the temporary folder.
for _folder in (os.environ["CPCL_KIT_PREPARED"], os.environ["CPCL_KIT_CACHE"]):
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)
