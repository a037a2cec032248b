"""The errors the OCR core raises. Each message is meant to be shown to a person as it is; it is an
appliance.messages.Text, so a UI can say it in its own language (`message_of(error)`)."""

from appliance.messages import Text


class OcrError(Exception):
    """Base class: anything the OCR core refuses or fails to do, with a message a person can act on."""


class InputError(OcrError):
    """A file (or uploaded blob) that cannot be read: corrupt, wrong type, too big, empty."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(Text("input", name=name, reason=reason))


class TaskNotSupported(OcrError):
    """The chosen engine cannot do this task (the CPU engine only spots and reads text)."""

    def __init__(self, task: str, engine: str, supported):
        self.task = task
        self.engine = engine
        names = ", ".join(sorted(str(t) for t in supported))
        super().__init__(Text("task_not_supported", task=task, engine=engine, tasks=names))


class EngineUnavailable(OcrError):
    """The engine cannot start here: no GPU, no model directory, package missing, server down."""

    def __init__(self, engine: str, reason: str):
        self.engine = engine
        self.reason = reason
        super().__init__(Text("engine_unavailable", engine=engine, reason=reason))


class EngineLost(EngineUnavailable):
    """The engine stopped answering in the middle of a job (the model server crashed or restarted). The queue puts
    the job back and opens the engine again, rather than failing every job behind it."""
