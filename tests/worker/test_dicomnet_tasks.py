"""backend.dicomnet sends its tasks by name: the worker must register them, on `default`."""

from __future__ import annotations


def test_the_worker_registers_the_dicom_tasks_on_the_default_queue() -> None:
    from backend.config.celery import app
    from backend.dicomnet import services

    app.loader.import_default_modules()
    for name in (services.CLOSE_TASK, services.DELIVER_TASK):
        assert name in app.tasks
        assert app.amqp.router.route({}, name)["queue"].name == "default"
