"""Developer machine: debug on, a fixed development key when none is given."""

from .base import *  # noqa: F403
from .base import REPO_ROOT, env
from .base import SECRET_KEY as _SECRET_KEY

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = _SECRET_KEY or "local-development-key-not-for-production"

(REPO_ROOT / "var").mkdir(exist_ok=True)
