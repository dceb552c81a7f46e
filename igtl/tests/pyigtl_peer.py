"""Independent OpenIGTLink peer for telecho's server tests: PyPI `pyigtl` (0.3.4).

Usage: python3 pyigtl_peer.py PORT INPUT_JSON

INPUT_JSON holds what the server was given, in telecho's units (metres, robot base frame):
per frame the probe pose `t_base_probe` and the pixels, the image calibration `t_probe_image`,
the landmarks, the base->LPS rotation, and the STATUS messages. This script computes on its own
what Slicer must see (millimetres, LPS) and checks it against what arrives through two clients:

* `pyigtl.OpenIGTLinkClient` (its own receive thread; keeps the latest message per device). pyigtl
  0.3.4 has no STATUS class, so one is registered here, written from the protocol's status.md.
* a raw socket that reads every message with pyigtl's header parser and message classes and checks
  each body's CRC-64 with pyigtl's own CRC function (crcmod, ECMA-182), which its client skips.

Prints one JSON summary line; exits non-zero with the reason on the first mismatch.
"""

import json
import socket
import struct
import sys
import threading
import time

import numpy as np
import pyigtl
from pyigtl import messages as igtl_messages


class StatusMessage(igtl_messages.MessageBase):
    """STATUS per Documents/Protocol/status.md: uint16 code, int64 sub-code, char[20] error
    name, zero-terminated message."""

    def __init__(self, timestamp=None, device_name=None):
        igtl_messages.MessageBase.__init__(self, timestamp=timestamp, device_name=device_name)
        self._message_type = "STATUS"
        self.code = 0
        self.subcode = 0
        self.error_name = ""
        self.status_message = ""
        self._valid_message = True

    def _unpack_content(self, content):
        self.code, self.subcode, name = struct.unpack("> H q 20s", content[:30])
        self.error_name = name.split(b"\0", 1)[0].decode()
        self.status_message = content[30:].split(b"\0", 1)[0].decode()


igtl_messages.message_type_to_class_constructor["STATUS"] = StatusMessage


def fail(reason):
    print("MISMATCH: " + reason, file=sys.stderr)
    sys.exit(1)


def close(a, b, tol, what):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.allclose(a, b, atol=tol, rtol=0):
        fail(f"{what}: got\n{a}\nexpected\n{b}")


def main():
    port = int(sys.argv[1])
    spec = json.load(open(sys.argv[2]))
    c = np.array(spec["r_lps_base"], dtype=np.float64)
    s = np.diag([1000.0, 1000.0, 1000.0, 1.0])
    c4 = np.eye(4)
    c4[:3, :3] = c
    t_probe_image = np.array(spec["t_probe_image"], dtype=np.float64)
    width, height = spec["width"], spec["height"]
    frames = spec["frames"]

    def expected_probe(i):
        t = np.array(frames[i]["t_base_probe"], dtype=np.float64)
        return s @ c4 @ t @ np.linalg.inv(s)  # mm in, mm out, LPS axes

    def expected_ijk(i):
        t = np.array(frames[i]["t_base_probe"], dtype=np.float64)
        return s @ c4 @ t @ t_probe_image  # pixel index in, LPS mm out

    def expected_pixels(i):
        return np.array(frames[i]["pixels"], dtype=np.uint8).reshape(height, width)

    def check_transform(msg, i, via):
        close(msg.matrix, expected_probe(i), 1e-3, f"{via} TRANSFORM frame {i}")

    def check_image(msg, i, via):
        if msg.world_coordinate_system != "lps":
            fail(f"{via} IMAGE frame {i}: coordinate system {msg.world_coordinate_system}")
        img = np.asarray(msg.image)
        if img.shape != (1, height, width) or img.dtype != np.uint8:
            fail(f"{via} IMAGE frame {i}: shape {img.shape} dtype {img.dtype}")
        if not np.array_equal(img[0], expected_pixels(i)):
            fail(f"{via} IMAGE frame {i}: pixels differ")
        close(msg.ijk_to_world_matrix, expected_ijk(i), 2e-3, f"{via} IMAGE frame {i} ijk_to_world")
        spacing = np.linalg.norm(np.asarray(msg.ijk_to_world_matrix)[:3, :3], axis=0)
        want = [1000.0 * spec["pixel_spacing_m"][0], 1000.0 * spec["pixel_spacing_m"][1]]
        close(spacing[:2], want, 1e-5, f"{via} IMAGE frame {i} spacing (mm)")

    def check_points(msg, via):
        want = spec["landmarks"]
        if list(msg.names) != [p["name"] for p in want]:
            fail(f"{via} POINT names {msg.names}")
        got = np.array(msg.positions, dtype=np.float64)
        exp = np.array([1000.0 * c @ np.array(p["xyz"]) for p in want])
        close(got, exp, 1e-3, f"{via} POINT positions (mm, LPS)")
        if any(g != "Landmark" for g in msg.groups):
            fail(f"{via} POINT groups {msg.groups}")

    def check_status(msg, via, statuses_seen):
        got = (msg.code, msg.subcode, msg.error_name, msg.status_message)
        for k, st in enumerate(spec["statuses"]):
            if got[:3] != (st["code"], st["subcode"], st["error_name"]):
                continue
            # An entry gives the exact message, or only how it starts.
            if got[3] == st.get("message") or got[3].startswith(st.get("message_prefix", "\0")):
                statuses_seen.add(k)
                return
        fail(f"{via} STATUS {got} is none of {spec['statuses']}")

    def frame_of(msg, via):
        if msg.header_version != 2 or "frame" not in msg.metadata:
            fail(f"{via} {msg.message_type} without header version 2 and `frame` metadata")
        return int(msg.metadata["frame"])

    # --- raw socket: every message, CRC checked with pyigtl's CRC64 ---
    raw = {"TRANSFORM": set(), "IMAGE": set(), "POINT": 0, "STATUS": set(), "crc_checked": 0}
    raw_error = []

    def recv_exact(sock, n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def raw_reader(sock):
        try:
            while True:
                header = recv_exact(sock, 58)
                if header is None:
                    return
                fields = igtl_messages.MessageBase.parse_header(header)
                (crc,) = struct.unpack("> Q", header[50:58])
                body = recv_exact(sock, fields["body_size"])
                if body is None:
                    raw_error.append("connection closed inside a body")
                    return
                if igtl_messages.CRC64(body) != crc:
                    raw_error.append(f"{fields['message_type']}: CRC mismatch")
                    return
                raw["crc_checked"] += 1
                msg = igtl_messages.MessageBase.create_message(fields["message_type"])
                if msg is None:
                    raw_error.append(f"unexpected type {fields['message_type']}")
                    return
                msg.unpack(fields, body)
                t = fields["message_type"]
                if t == "TRANSFORM":
                    i = frame_of(msg, "raw")
                    check_transform(msg, i, "raw")
                    raw["TRANSFORM"].add(i)
                elif t == "IMAGE":
                    i = frame_of(msg, "raw")
                    check_image(msg, i, "raw")
                    raw["IMAGE"].add(i)
                elif t == "POINT":
                    check_points(msg, "raw")
                    raw["POINT"] += 1
                elif t == "STATUS":
                    check_status(msg, "raw", raw["STATUS"])
                    if end_index in raw["STATUS"]:
                        return
        except SystemExit as e:
            raw_error.append(f"check failed ({e})")
        except Exception as e:  # noqa: BLE001 - report anything as a failure
            raw_error.append(repr(e))

    end_index = len(spec["statuses"]) - 1
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw_thread = threading.Thread(target=raw_reader, args=(sock,), daemon=True)
    raw_thread.start()

    # --- pyigtl's own client ---
    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port)
    seen = {"TRANSFORM": set(), "IMAGE": set(), "POINT": 0, "STATUS": set()}
    deadline = time.time() + 30
    while time.time() < deadline:
        for msg in client.get_latest_messages():
            t = msg.message_type
            if t == "TRANSFORM":
                i = frame_of(msg, "client")
                check_transform(msg, i, "client")
                seen["TRANSFORM"].add(i)
            elif t == "IMAGE":
                i = frame_of(msg, "client")
                check_image(msg, i, "client")
                seen["IMAGE"].add(i)
            elif t == "POINT":
                check_points(msg, "client")
                seen["POINT"] += 1
            elif t == "STATUS":
                check_status(msg, "client", seen["STATUS"])
        if end_index in seen["STATUS"] and not raw_thread.is_alive():
            break
        time.sleep(0.002)
    client.stop()
    raw_thread.join(timeout=5)
    if raw_error:
        fail("raw reader: " + "; ".join(raw_error))
    n = len(frames)
    if raw["TRANSFORM"] != set(range(n)) or raw["IMAGE"] != set(range(n)):
        fail(f"raw reader got transforms {sorted(raw['TRANSFORM'])} images {sorted(raw['IMAGE'])} of {n}")
    if raw["POINT"] < 1 or raw["STATUS"] != set(range(len(spec["statuses"]))):
        fail(f"raw reader got {raw['POINT']} POINT and statuses {sorted(raw['STATUS'])}")
    if not seen["TRANSFORM"] or not seen["IMAGE"] or seen["POINT"] < 1 or end_index not in seen["STATUS"]:
        fail(f"pyigtl client saw {seen}")
    print(json.dumps({
        "pyigtl": pyigtl.__version__ if hasattr(pyigtl, "__version__") else "?",
        "raw_crc_checked": raw["crc_checked"],
        "raw_frames": len(raw["IMAGE"]),
        "client_transforms": len(seen["TRANSFORM"]),
        "client_images": len(seen["IMAGE"]),
        "client_points": seen["POINT"],
        "client_statuses": sorted(seen["STATUS"]),
    }))


if __name__ == "__main__":
    main()
