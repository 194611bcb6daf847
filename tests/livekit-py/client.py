"""A non-browser LiveKit client for tests/livekit_python.rs: the stock `livekit` SDK from
PyPI (its native WebRTC library inside the wheel) joins a room through Sluice's LiveKit
front door, publishes a synthetic camera (a moving gradient) and microphone (a tone),
subscribes to everyone else and prints, once a second, one JSON line of what it received:

    {"state": "connected", "video": {"<identity>": frames}, "audio": {"<identity>": frames},
     "width": {"<identity>": last frame width}}

It leaves when stdin closes (the test's handle) or after --seconds.

Usage: client.py URL TOKEN [--seconds N]
"""

import argparse
import asyncio
import json
import math
import sys

from livekit import rtc

WIDTH, HEIGHT, FPS = 320, 180, 15
RATE, CHUNK = 48000, 480  # 10 ms of mono 48 kHz audio


def report(**fields):
    print(json.dumps(fields), flush=True)


async def count_video(stream, identity, seen):
    async for event in stream:
        seen["video"][identity] = seen["video"].get(identity, 0) + 1
        seen["width"][identity] = event.frame.width


async def count_audio(stream, identity, seen):
    async for _ in stream:
        seen["audio"][identity] = seen["audio"].get(identity, 0) + 1


async def camera(source):
    frame = bytearray(WIDTH * HEIGHT * 4)
    n = 0
    while True:
        shade = (n * 4) % 256
        for y in range(0, HEIGHT, 4):
            row = bytes([(shade + y) % 256, 128, 255 - shade, 255]) * WIDTH
            for dy in range(4):
                start = ((y + dy) * WIDTH) * 4
                frame[start : start + WIDTH * 4] = row
        source.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, frame))
        n += 1
        await asyncio.sleep(1 / FPS)


async def microphone(source):
    n = 0
    while True:
        samples = bytearray()
        for i in range(CHUNK):
            v = int(8000 * math.sin(2 * math.pi * 440 * (n * CHUNK + i) / RATE))
            samples += v.to_bytes(2, "little", signed=True)
        await source.capture_frame(rtc.AudioFrame(bytes(samples), RATE, 1, CHUNK))
        n += 1


async def stdin_closed():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(1024):
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("token")
    ap.add_argument("--seconds", type=float, default=600)
    args = ap.parse_args()

    seen = {"video": {}, "audio": {}, "width": {}}
    tasks = []
    room = rtc.Room()

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            tasks.append(asyncio.ensure_future(count_video(rtc.VideoStream(track), participant.identity, seen)))
        elif track.kind == rtc.TrackKind.KIND_AUDIO:
            tasks.append(asyncio.ensure_future(count_audio(rtc.AudioStream(track), participant.identity, seen)))

    # Sluice serves LiveKit's single-peer-connection signaling (/rtc/v1) only; this SDK
    # version defaults to the dual-connection /rtc path.
    options = rtc.RoomOptions(auto_subscribe=True, single_peer_connection=True)
    try:
        await room.connect(args.url, args.token, options=options)
    except Exception as e:  # reported to the test, which fails with it
        report(state="failed", error=str(e))
        return
    vsource = rtc.VideoSource(WIDTH, HEIGHT)
    asource = rtc.AudioSource(RATE, 1)
    vtrack = rtc.LocalVideoTrack.create_video_track("camera", vsource)
    atrack = rtc.LocalAudioTrack.create_audio_track("microphone", asource)
    await room.local_participant.publish_track(
        vtrack, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
    )
    await room.local_participant.publish_track(
        atrack, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )
    tasks += [asyncio.ensure_future(camera(vsource)), asyncio.ensure_future(microphone(asource))]
    done = asyncio.ensure_future(stdin_closed())
    deadline = asyncio.get_running_loop().time() + args.seconds
    while not done.done() and asyncio.get_running_loop().time() < deadline:
        report(state="connected", **seen)
        await asyncio.sleep(1)
    for t in tasks:
        t.cancel()
    await room.disconnect()
    report(state="left", **seen)


if __name__ == "__main__":
    asyncio.run(main())
