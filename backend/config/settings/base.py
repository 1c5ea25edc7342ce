"""Settings shared by every environment.

The process environment is read here and only here; the other settings modules
derive from these values.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from kombu import Queue

from backend.config.sizing import inference_processes

REPO_ROOT = Path(__file__).resolve().parents[3]
BACKEND_DIR = REPO_ROOT / "backend"
FRONTEND_DIR = REPO_ROOT / "frontend"

env = environ.Env()

# --- values from the environment -------------------------------------------------------------
SECRET_KEY: str | None = env.str("SECRET_KEY", default=None)
DEBUG: bool = env.bool("DEBUG", default=False)
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Headers set by a reverse proxy are trusted only when configured: a client that reaches
# Django directly could otherwise claim HTTPS, another host or another address.
# X-Forwarded-Proto: https marks a request as secure (the proxy terminates TLS).
TRUST_X_FORWARDED_PROTO: bool = env.bool("TRUST_X_FORWARDED_PROTO", default=False)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if TRUST_X_FORWARDED_PROTO else None
)
# X-Forwarded-Host replaces Host (still checked against ALLOWED_HOSTS).
USE_X_FORWARDED_HOST: bool = env.bool("USE_X_FORWARDED_HOST", default=False)
# Reverse proxies in front of Django whose X-Forwarded-For is trusted (throttling and the
# audit log's client address); 0 = the peer address only.
NUM_PROXIES: int = env.int("NUM_PROXIES", default=0)
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{REPO_ROOT / 'var' / 'db.sqlite3'}")
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
REDIS_URL: str = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(REPO_ROOT / "var" / "media")))
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(REPO_ROOT / "var" / "static")))
# Open sign-up of new hospitals (on here and in local/test; production defaults it off).
SIGNUP_ENABLED: bool = env.bool("SIGNUP_ENABLED", default=True)
# The model the workers load. The shipped one is multi-head: binary, etiology and the scope
# gate from one forward pass. MODEL_CHECKPOINT_ETIOLOGY is read only beside a single-task
# binary checkpoint (a second model for the etiology, as before version 2).
MODEL_CHECKPOINT_BINARY: str = env.str(
    "MODEL_CHECKPOINT_BINARY", default=str(REPO_ROOT / "ml" / "weights" / "multi.pt")
)
MODEL_CHECKPOINT_ETIOLOGY: str = env.str("MODEL_CHECKPOINT_ETIOLOGY", default="")
MAX_UPLOAD_FILE_BYTES: int = env.int("MAX_UPLOAD_FILE_BYTES", default=64 * 1024 * 1024)
MAX_FILES_PER_STUDY: int = env.int("MAX_FILES_PER_STUDY", default=1000)
# Store a small model-ready copy of DICOM and large uploads, made by the worker's first decode,
# so that a retry or a preview does not decode the original again.
WORKING_COPIES: bool = env.bool("WORKING_COPIES", default=True)
# One upload request as a whole (checked from Content-Length before the body is read).
MAX_UPLOAD_REQUEST_BYTES: int = env.int("MAX_UPLOAD_REQUEST_BYTES", default=4 * 1024**3)
# ZIP archives in an upload: caps on what one archive may expand to (see docs/api.md).
MAX_ZIP_ENTRIES: int = env.int("MAX_ZIP_ENTRIES", default=1000)
MAX_ZIP_UNCOMPRESSED_BYTES: int = env.int("MAX_ZIP_UNCOMPRESSED_BYTES", default=2 * 1024**3)
MAX_ZIP_RATIO: int = env.int("MAX_ZIP_RATIO", default=100)
# Failed-login lockout and request rate of the login, token and sign-up endpoints.
AUTH_RATE: str = env.str("AUTH_RATE", default="20/m")
LOGIN_FAILURE_RATE: str = env.str("LOGIN_FAILURE_RATE", default="5/15m")
# API tokens (django-rest-knox): stored hashed, valid this long, at most this many per user
# (issuing one more revokes the oldest).
API_TOKEN_TTL_HOURS: int = env.int("API_TOKEN_TTL_HOURS", default=30 * 24)
API_TOKENS_PER_USER: int = env.int("API_TOKENS_PER_USER", default=10)
# Upload requests per user (POST /api/studies/), answered 429 with Retry-After beyond it.
UPLOAD_RATE: str = env.str("UPLOAD_RATE", default="120/m")
# Bytes of images a hospital may upload in any 24 hours (0 = no limit); a hospital's own
# `upload_quota_bytes_per_day` (Django admin) overrides it.
UPLOAD_QUOTA_BYTES_PER_DAY: int = env.int("UPLOAD_QUOTA_BYTES_PER_DAY", default=20 * 1024**3)
# Studies are deleted with their files this many days after upload (0 = kept until deleted).
STUDY_RETENTION_DAYS: int = env.int("STUDY_RETENTION_DAYS", default=0)
# Files in storage that no row refers to are deleted by the orphan sweep once older than
# this (longer than any upload takes: an upload stores files before its rows commit).
ORPHAN_FILE_GRACE_S: int = env.int("ORPHAN_FILE_GRACE_S", default=24 * 3600)
# Images per inference task (the web splits studies into chunks; a worker runs a chunk as a
# pipeline of INFERENCE_BATCH_SIZE batches, so per-task costs are paid once per chunk).
INFERENCE_CHUNK_SIZE: int = env.int("INFERENCE_CHUNK_SIZE", default=128)
CELERY_TASK_ALWAYS_EAGER: bool = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")

# --- Django ---------------------------------------------------------------------------------
INSTALLED_APPS = [
    # Django's admin with a throttled login (backend/accounts/admin_site.py).
    "backend.accounts.apps.PneumoAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "backend.accounts",
    "backend.studies",
    "backend.core",
    "backend.audit",
    "backend.dicomnet",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "backend.core.middleware.RequestSizeLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "backend.config.urls"
WSGI_APPLICATION = "backend.config.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [FRONTEND_DIR],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [FRONTEND_DIR / "static"]
# Uploaded X-rays and heatmaps are patient data: they are never exposed under a public URL.
# Files are streamed by authenticated API views; MEDIA_URL is deliberately unused.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Django's own guard sits a little above ours so that our per-study limit answers with a
# readable reason; past it Django refuses the request outright.
DATA_UPLOAD_MAX_NUMBER_FILES = MAX_FILES_PER_STUDY + 10
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "knox.auth.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # Throttle history lives in the cache (Redis), shared by every web process.
    "DEFAULT_THROTTLE_RATES": {"auth": AUTH_RATE, "login_failures": LOGIN_FAILURE_RATE,
                               "upload": UPLOAD_RATE},
    # 0 = the peer address only, so a client cannot dodge a throttle with its own
    # X-Forwarded-For (see NUM_PROXIES above).
    "NUM_PROXIES": NUM_PROXIES,
}
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=API_TOKEN_TTL_HOURS),
    "AUTO_REFRESH": False,
    "AUTH_HEADER_PREFIX": "Token",
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "pneumoscan",
    }
}
SPECTACULAR_SETTINGS = {
    "TITLE": "PneumoScan API",
    "DESCRIPTION": "Batch chest X-ray pneumonia classification with class-activation heatmaps.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Separate request/response components, so multipart file fields are typed as binary.
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "StudyStatusEnum": "backend.studies.models.Study.Status",
        "ImageStatusEnum": "backend.studies.models.Image.Status",
    },
}

# --- Celery (namespace CELERY_) ----------------------------------------------------------------
# The longest task is one inference chunk; the hard limit bounds it and the Redis visibility
# timeout must exceed it, or Redis redelivers a task that is still running (and it runs twice).
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
# Redelivery of a message whose worker vanished without a trace (kill -9 of the whole worker,
# a machine lost) happens after this many seconds; the stuck-image sweep below usually acts
# sooner. Always kept above the hard time limit.
CELERY_VISIBILITY_TIMEOUT = max(
    env.int("CELERY_VISIBILITY_TIMEOUT", default=CELERY_TASK_TIME_LIMIT * 4),
    CELERY_TASK_TIME_LIMIT + 60,
)
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # Message priorities 0 (urgent, served first) .. 9; each step is its own Redis list.
    "priority_steps": list(range(10)),
    "sep": ":",
    # A worker consuming several queues serves them in the order given (-Q inference,default).
    "queue_order_strategy": "priority",
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep a worker's database connection across tasks (Celery closes it after each task by
# default); CONN_HEALTH_CHECKS replaces a connection the database dropped.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # Redis down for a while: keep trying
CELERY_RESULT_BACKEND = None  # status lives in our database, never in AsyncResult
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# Declared, so Flower lists both queues even before it has inspected a worker.
CELERY_TASK_QUEUES = (Queue("inference"), Queue("default"))
CELERY_TASK_DEFAULT_PRIORITY = 5
CELERY_TASK_ROUTES = {"worker.tasks.infer_images": {"queue": "inference"},
                      "dicomnet.*": {"queue": "default"}}
CELERY_TASK_ALWAYS_EAGER = CELERY_TASK_ALWAYS_EAGER
# A pool process loads torch and the model in worker_process_init: give it time to start.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 120.0
CELERY_WORKER_SEND_TASK_EVENTS = True  # Flower shows live task state
CELERY_TASK_SEND_SENT_EVENT = True
# A restarted Redis loses connections: the worker reconnects and carries on.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-images": {
        "task": "worker.tasks.sweep_stuck_images",
        "schedule": env.float("SWEEP_INTERVAL_S", default=60.0),
        "options": {"queue": "default", "expires": 60},
    },
    # PHI lifecycle: studies past STUDY_RETENTION_DAYS (a no-op when 0), then files that no
    # row refers to.
    "purge-expired-studies": {
        "task": "worker.tasks.purge_expired_studies",
        "schedule": env.float("RETENTION_INTERVAL_S", default=3600.0),
        "options": {"queue": "default", "expires": 3600},
    },
    "sweep-orphan-files": {
        "task": "worker.tasks.sweep_orphan_files",
        "schedule": env.float("ORPHAN_SWEEP_INTERVAL_S", default=24 * 3600.0),
        "options": {"queue": "default", "expires": 3600},
    },
}

# --- Inference worker ---------------------------------------------------------------------------
# Images left in `processing` longer than this (a worker died with them) are requeued by the
# sweep; it exceeds the hard time limit so a chunk that is still running is left alone.
STUCK_IMAGE_DEADLINE_S: int = env.int(
    "STUCK_IMAGE_DEADLINE_S", default=CELERY_TASK_TIME_LIMIT + 60
)
# Queued images whose message was lost (Redis restarted without persistence) are requeued by
# the sweep after this long, but only while the inference queue is empty.
QUEUED_IMAGE_DEADLINE_S: int = env.int("QUEUED_IMAGE_DEADLINE_S", default=900)
# An image claimed this many times without a result (its worker died each time) is failed.
INFERENCE_MAX_ATTEMPTS: int = env.int("INFERENCE_MAX_ATTEMPTS", default=3)
# Untrusted decoding (ml/sandbox.py): child processes of each inference pool process, each
# with an address-space limit and a time limit per file.
DECODE_PROCESSES: int = env.int("DECODE_PROCESSES", default=0)  # 0: INFERENCE_IO_THREADS
DECODE_MEMORY_LIMIT_MB: int = env.int("DECODE_MEMORY_LIMIT_MB", default=1536)
DECODE_TIME_LIMIT_S: float = env.float("DECODE_TIME_LIMIT_S", default=60.0)
# The sweep: queued images without a message for this long are sent (the broker was down);
# studies left receiving parts this long are closed; unfinished studies whose images are all
# finished this long are recomputed.
UNSENT_GRACE_S: float = env.float("UNSENT_GRACE_S", default=20.0)
UPLOAD_OPEN_TIMEOUT_S: float = env.float("UPLOAD_OPEN_TIMEOUT_S", default=3600.0)
RECONCILE_AFTER_S: float = env.float("RECONCILE_AFTER_S", default=60.0)
# Threads that read, decode and preprocess a chunk, and encode its heatmaps (0 = CPU count:
# more only help when reads wait on the network, e.g. S3; on a CPU worker they steal time
# from the forward pass, docs/benchmarks.md).
INFERENCE_IO_THREADS: int = env.int("INFERENCE_IO_THREADS", default=0)
# CPU priority of those threads: "auto" = idle priority on a CPU worker with one pool process
# (they only use what the forward pass leaves free), normal with a GPU or several pool
# processes (idle threads starve beside the other processes); or "idle" / "normal".
INFERENCE_IO_PRIORITY: str = env.str("INFERENCE_IO_PRIORITY", default="auto")
# Pool processes of an inference worker, each with its own copy of the (small) models: its
# Celery concurrency, unless --concurrency is given. 0 = auto: one per CPU core, at most 4, on
# a CPU worker (two single-threaded processes moved ~1.4x the images of one process with two
# threads on 2 cores: while one runs Python, decodes or writes, the other computes;
# docs/benchmarks.md); 1 with a GPU (one CUDA context, batching keeps it busy).
INFERENCE_PROCESSES: int = env.int("INFERENCE_PROCESSES", default=0)
# torch intra-op threads per pool process on a CPU worker (0 = the cores split between the
# pool processes).
INFERENCE_TORCH_THREADS: int = env.int("INFERENCE_TORCH_THREADS", default=0)
# Images per forward pass on a worker (a chunk is processed as a pipeline of such batches).
INFERENCE_BATCH_SIZE: int = env.int("INFERENCE_BATCH_SIZE", default=32)
# "auto" (CUDA when present), "cpu" or "cuda".
INFERENCE_DEVICE: str = env.str("INFERENCE_DEVICE", default="auto")
CELERY_WORKER_CONCURRENCY = inference_processes(INFERENCE_PROCESSES, device=INFERENCE_DEVICE)
# Load the models when a pool process starts (off only to test lazy loading).
INFERENCE_PRELOAD: bool = env.bool("INFERENCE_PRELOAD", default=True)

# --- DICOM network (docs/dicom.md) -------------------------------------------------------------
# The listener (`manage.py dicomlistener`, started by `make run`): its port, AE title and the
# quiet time after which a study received by C-STORE is closed and classified.
DICOM_PORT: int = env.int("DICOM_PORT", default=11112)
DICOM_BIND: str = env.str("DICOM_BIND", default="0.0.0.0")  # noqa: S104
DICOM_AE_TITLE: str = env.str("DICOM_AE_TITLE", default="PNEUMOSCAN")
DICOM_STUDY_QUIET_S: float = env.float("DICOM_STUDY_QUIET_S", default=30.0)
# Results to the PACS: attempts and the first backoff (doubling, capped at 10 min, jittered).
DICOM_DELIVERY_MAX_RETRIES: int = env.int("DICOM_DELIVERY_MAX_RETRIES", default=12)
DICOM_DELIVERY_BACKOFF_S: float = env.float("DICOM_DELIVERY_BACKOFF_S", default=15.0)
DICOM_NETWORK_TIMEOUT_S: float = env.float("DICOM_NETWORK_TIMEOUT_S", default=30.0)

# --- Metrics (/metrics for Prometheus) ----------------------------------------------------------
# A scrape must send `Authorization: Bearer <METRICS_TOKEN>`. Without a token /metrics answers
# 403, unless METRICS_PUBLIC (local development and tests only; production ignores it).
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")
METRICS_PUBLIC: bool = env.bool("METRICS_PUBLIC", default=False)
# Readiness (/api/health/, /api/health/ready/) is checked at most once per this many seconds
# for all web processes together; a flood of health checks is answered from the cache.
HEALTH_CACHE_S: float = env.float("HEALTH_CACHE_S", default=5.0)

# --- Storage: local filesystem by default, S3-compatible object storage when configured -------
STORAGE_BACKEND: str = env.str("STORAGE_BACKEND", default="filesystem")
if STORAGE_BACKEND == "s3":
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "access_key": env.str("AWS_ACCESS_KEY_ID", default=None),
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default=None),
            "addressing_style": env.str("AWS_S3_ADDRESSING_STYLE", default=None),
            "location": env.str("AWS_LOCATION", default=""),
            # Patient data: private objects, never overwritten, only reached via signed access.
            "default_acl": None,
            "file_overwrite": False,
            "querystring_auth": True,
        },
    }
elif STORAGE_BACKEND != "filesystem":
    raise ValueError(f"STORAGE_BACKEND must be 'filesystem' or 's3', not {STORAGE_BACKEND!r}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web server and the workers write concurrently: wait for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
