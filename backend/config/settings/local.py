"""Developer machine (`make run`): a fixed development key when none is given.

DEBUG stays off unless the environment turns it on (DEBUG=1): `make run` listens on every
interface, and Django's debug pages show settings and code to whoever triggers an error.
"""

from .base import *  # noqa: F403
from .base import REPO_ROOT, env
from .base import SECRET_KEY as _SECRET_KEY

SECRET_KEY = _SECRET_KEY or "local-development-key-not-for-production"
# /metrics without a token on a developer's machine, unless METRICS_PUBLIC=0.
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=True)

(REPO_ROOT / "var").mkdir(exist_ok=True)
