"""The kit's exceptions. Every message names the problem and the fix."""


class DGemmaError(Exception):
    """Base class for the kit's errors."""


class CheckpointError(DGemmaError, ValueError):
    """A checkpoint directory is missing, incomplete, corrupt, or does not match its config."""


class InputError(DGemmaError, ValueError):
    """A generation input or setting is invalid."""


class DeviceError(DGemmaError, RuntimeError):
    """The requested device does not exist here or lacks the memory the model needs."""


class TraceError(DGemmaError, ValueError):
    """A denoising trace file is missing, corrupt, truncated, of another format version, or inconsistent."""


class MissingToolError(DGemmaError, RuntimeError):
    """An optional outside tool (e.g. ffmpeg for MP4 export) is not installed."""


class EngineError(DGemmaError, RuntimeError):
    """Another engine the kit drives (vLLM in-process, or a vLLM server) failed, refused or is unreachable."""
