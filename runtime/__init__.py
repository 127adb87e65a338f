"""The live engine: camera in, avatar out, in real time (``avatar-engine start``, ``serve``, ``doctor``).

Data flows one way through small modules:

* cameras: capture threads and camera sources (:mod:`.capture`, :mod:`.track_camera`),
  latest-value slots between threads (:mod:`.slots`);
* a session: its options and report (:mod:`.session`), the processing threads and the neutral avatar
  (:mod:`.processing`), the "look at the camera" neutral-pose step (:mod:`.neutral`), user
  controls and hotkeys (:mod:`.controls`), output pacing and recording cadence (:mod:`.pacing`),
  statistics (:mod:`.stats`), and :class:`~runtime.engine.LiveEngine` tying them together (:mod:`.engine`);
* outputs, all one :class:`~runtime.sinks.FrameSink` interface (:mod:`.sinks`), made and opened
  per session by :mod:`.outputs`: virtual camera (:mod:`.vcam`), recording (:mod:`.recorder`),
  preview window with overlays (:mod:`.preview`, :mod:`.overlay`), WebRTC video (:mod:`.webrtc_tracks`);
* WebRTC: microphone and delayed audio (:mod:`.audio`), the signalling server (:mod:`.server`),
  and an offline loopback-only harness for tests and benchmarks (:mod:`.loopback`);
* ``avatar-engine doctor`` (:mod:`.doctor`).
"""
