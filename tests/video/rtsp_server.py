"""An RTSP server for the stream tests, run by the system Python (GStreamer's RTSP server
library through PyGObject, which the project's environment does not have).

    /usr/bin/python3 tests/video/rtsp_server.py PORT [WIDTHxHEIGHT] [FPS]

serves rtsp://127.0.0.1:PORT/test: a moving test pattern as JPEG over RTP
(``videotestsrc ! jpegenc ! rtpjpegpay``), RTP over TCP or UDP as the client asks. Prints
"ready" once it listens, and serves until killed (SIGTERM or SIGKILL: the tests kill it to make
an outage).
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port = int(sys.argv[1])
    width, height = (int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "320x240").split("x"))
    fps = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! "
        f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 ! "
        f"jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(True)  # one pipeline for every client: reconnecting is cheap
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        sys.exit(1)
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
