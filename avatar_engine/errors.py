"""User-facing errors.

Every problem a user can cause (a bad photo, a missing file, a broken weight file) raises an
:class:`AvatarError` subclass with a one-line message. The CLI prints ``error: <message>`` and
exits with status 2; library users catch :class:`AvatarError`.
"""
from __future__ import annotations


class AvatarError(Exception):
    """Base class of the errors whose message is meant for the user (one line, no traceback)."""


class InputFileError(AvatarError):
    """A file the user named is missing, unreadable or not of the expected kind."""


class ImageReadError(InputFileError):
    """A photo could not be read or decoded."""


class VideoReadError(InputFileError):
    """A video could not be opened or decoded."""


class NoFaceError(AvatarError):
    """No face was found where one is required (e.g. in the source photo)."""


class WeightsError(AvatarError):
    """A model weight file is missing, corrupt or does not match the network."""


class CameraError(AvatarError):
    """A camera could not be opened or stopped delivering frames."""


class ProfileError(AvatarError):
    """An enrollment profile is missing, corrupt or does not fit this version."""
