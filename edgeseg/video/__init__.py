"""Frames in and frames out: cameras, streams, files, folders and windows behind two calls.

``open_source(spec)`` gives an iterator of uint8 RGB frames; ``open_sink(spec)`` something to
write them to. Both are context managers with ``close()``, so a demo reads::

    with open_source("0") as frames, open_sink("display") as window:
        for frame in frames:
            window.write(segment(frame))

Sources: ``0`` or ``/dev/video0`` (camera), ``rtsp://...`` (stream), ``clip.mp4``, ``frames/``,
``synthetic?size=640x360&fps=30``. Sinks: ``display``, ``out.mp4``, ``frames/``,
``http://0.0.0.0:8080`` (a web page for a board without a screen: ``HttpViewSink``), ``none``.
``SOURCE_SPECS`` and ``SINK_SPECS`` hold the full syntax, ``SOURCE_OPTIONS`` and
``SINK_OPTIONS`` the options of each kind. ``as_source`` / ``as_sink`` also take a source or
sink already open (or a list of frames) for the same ``with`` block. ``Prefetcher`` reads and
prepares frames ahead in a worker thread. Only OpenCV and NumPy are imported.
"""

from edgeseg.video.http_view import HttpViewSink
from edgeseg.video.prefetch import PrefetchedFrame, Prefetcher
from edgeseg.video.sinks import (
    SINK_OPTIONS,
    SINK_SPECS,
    DisplaySink,
    ImageFolderSink,
    NullSink,
    Sink,
    SinkError,
    VideoFileSink,
    as_sink,
    display_unavailable_reason,
    open_sink,
    write_image,
)
from edgeseg.video.sources import (
    SOURCE_OPTIONS,
    SOURCE_SPECS,
    ImageFolderSource,
    LiveSource,
    Source,
    SourceError,
    SyntheticSource,
    VideoFileSource,
    as_source,
    list_video_devices,
    open_source,
    to_rgb_frame,
)

__all__ = [
    "SINK_OPTIONS",
    "SINK_SPECS",
    "SOURCE_OPTIONS",
    "SOURCE_SPECS",
    "DisplaySink",
    "HttpViewSink",
    "ImageFolderSink",
    "ImageFolderSource",
    "LiveSource",
    "NullSink",
    "PrefetchedFrame",
    "Prefetcher",
    "Sink",
    "SinkError",
    "Source",
    "SourceError",
    "SyntheticSource",
    "VideoFileSink",
    "VideoFileSource",
    "as_sink",
    "as_source",
    "display_unavailable_reason",
    "list_video_devices",
    "open_sink",
    "open_source",
    "to_rgb_frame",
    "write_image",
]
