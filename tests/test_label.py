"""Tests for the human labeling server (stage 1 done by a person)."""

import http.client
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from tiny_rlhf_t2i.label import serve

SAMPLES = [  # (prompt, category, split): six images over two categories
    ("two red circles on a gray background", "count", "seen"),
    ("three blue squares on a white background", "count", "seen"),
    ("one green triangle on a black background", "count", "unseen"),
    ("a yellow circle on a gray background", "color", "seen"),
    ("a red square on a white background", "color", "seen"),
    ("a blue triangle on a black background", "color", "unseen"),
]
IDS = [f"{i:06d}" for i in range(len(SAMPLES))]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "images").mkdir()
    lines = []
    for i, (sample_id, (prompt, category, split)) in enumerate(zip(IDS, SAMPLES)):
        Image.new("RGB", (16, 16), (40 * i, 100, 200)).save(tmp_path / "images" / f"{sample_id}.png")
        lines.append(json.dumps({
            "id": sample_id, "image": f"images/{sample_id}.png", "prompt": prompt,
            "category": category, "split": split, "seed": 100 + i,
            "judge_good": i % 2 == 0, "judge_reason": f"reason {i}"}))
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture
def server(folder):
    server = serve(folder, port=0)
    yield server
    server.shutdown()
    server.server_close()


def request(server, method, path, body=None, headers=None):
    """Send one raw request (no URL clean-up, so '..' reaches the server as typed)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if body is not None and headers is None:
        headers = {"Content-Type": "application/json"}
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    status, data = response.status, response.read()
    conn.close()
    return status, data


def post(server, path, body):
    status, data = request(server, "POST", path, body)
    return status, json.loads(data)


def state(server):
    status, data = request(server, "GET", "/api/state")
    assert status == 200
    return json.loads(data)


def label_rows(folder):
    path = folder / "labels.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def expected_row(i, label):
    prompt, category, split = SAMPLES[i]
    return {"id": IDS[i], "image": f"images/{IDS[i]}.png", "prompt": prompt,
            "category": category, "split": split, "seed": 100 + i,
            "label": label, "reason": "human", "labeler": "human"}


def test_page_has_the_buttons(server):
    status, data = request(server, "GET", "/")
    page = data.decode()
    assert status == 200 and page.startswith("<!doctype html>")
    for text in ("Good", "Bad", "Skip", "Undo", "show the judge's verdict (for learning)"):
        assert text in page
    assert "http://" not in page and "https://" not in page  # no external assets


def test_first_state_and_image(server):
    s = state(server)
    assert s["next"] == {"id": IDS[0], "image": f"/images/{IDS[0]}.png",
                         "prompt": SAMPLES[0][0], "category": "count",
                         "judge_good": True, "judge_reason": "reason 0"}
    assert s["progress"] == {"labeled": 0, "total": 6, "skipped": 0,
                             "per_category": {"count": [0, 3], "color": [0, 3]}}
    assert s["can_undo"] is False
    status, data = request(server, "GET", s["next"]["image"])
    assert status == 200 and data.startswith(b"\x89PNG")


def test_label_skip_and_undo(server, folder):
    assert post(server, "/api/label", {"id": IDS[0], "label": 1})[0] == 200
    assert post(server, "/api/label", {"id": IDS[1], "label": 0})[0] == 200
    status, s = post(server, "/api/skip", {"id": IDS[2]})
    assert status == 200 and s["next"]["id"] == IDS[3] and s["can_undo"]
    assert json.loads((folder / "skipped.json").read_text()) == [IDS[2]]
    assert s["progress"]["labeled"] == 2 and s["progress"]["skipped"] == 1

    status, s = post(server, "/api/undo", {})  # undoes the skip
    assert status == 200 and s["next"]["id"] == IDS[2]
    assert json.loads((folder / "skipped.json").read_text()) == []
    status, s = post(server, "/api/undo", {})  # undoes the label of IDS[1]
    assert status == 200 and s["next"]["id"] == IDS[1]
    assert s["progress"]["per_category"] == {"count": [1, 3], "color": [0, 3]}

    expected = json.dumps(expected_row(0, 1)) + "\n"
    assert (folder / "labels.jsonl").read_text() == expected
    assert post(server, "/api/undo", {})[0] == 200
    assert (folder / "labels.jsonl").read_text() == ""
    assert post(server, "/api/undo", {}) == (409, {"error": "nothing to undo"})
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_labeling_a_skipped_image_unskips_it(server, folder):
    post(server, "/api/skip", {"id": IDS[0]})
    status, s = post(server, "/api/label", {"id": IDS[0], "label": 0})
    assert status == 200 and s["progress"]["skipped"] == 0
    assert json.loads((folder / "skipped.json").read_text()) == []
    post(server, "/api/undo", {})  # back to skipped and unlabeled
    assert json.loads((folder / "skipped.json").read_text()) == [IDS[0]]
    assert label_rows(folder) == []


def test_relabel_replaces_the_row_and_undo_restores_it(server, folder):
    post(server, "/api/label", {"id": IDS[0], "label": 1})
    post(server, "/api/label", {"id": IDS[1], "label": 1})
    post(server, "/api/label", {"id": IDS[0], "label": 0})
    assert label_rows(folder) == [expected_row(0, 0), expected_row(1, 1)]
    post(server, "/api/undo", {})
    assert label_rows(folder) == [expected_row(0, 1), expected_row(1, 1)]


def test_concurrent_posts_never_lose_or_duplicate(server, folder):
    def hammer(sample_id, label):
        for _ in range(5):
            assert post(server, "/api/label", {"id": sample_id, "label": label})[0] == 200

    # Several threads click the same image, others label different images at once.
    threads = [threading.Thread(target=hammer, args=(IDS[0], i % 2)) for i in range(4)]
    threads += [threading.Thread(target=hammer, args=(sample_id, 1)) for sample_id in IDS[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = label_rows(folder)
    assert sorted(r["id"] for r in rows) == IDS
    assert state(server)["progress"]["labeled"] == 6
    assert state(server)["next"] is None


def test_restart_resumes_after_labels_and_skips(folder):
    server = serve(folder, port=0)
    post(server, "/api/label", {"id": IDS[0], "label": 1})
    post(server, "/api/skip", {"id": IDS[1]})
    post(server, "/api/label", {"id": IDS[3], "label": 0})
    server.shutdown()
    server.server_close()

    server = serve(folder, port=0)
    try:
        s = state(server)
        assert s["next"]["id"] == IDS[2]
        assert s["progress"] == {"labeled": 2, "total": 6, "skipped": 1,
                                 "per_category": {"count": [1, 3], "color": [1, 3]}}
        assert s["can_undo"] is False
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", [
    "/images/../samples.jsonl", "/images/%2e%2e/labels.jsonl", "/images/%2E%2E%2Fsamples.jsonl",
    "/../../etc/passwd", "/images/999999.png", "/images/", "/images", "/samples.jsonl",
    "/images//etc/passwd", "/images/000000.png/..", "/nope",
])
def test_only_known_images_are_served(server, path):
    assert request(server, "GET", path)[0] == 404


def test_wrong_host_header_is_refused(server):
    status, _ = request(server, "GET", "/api/state", headers={"Host": "evil.example:80"})
    assert status == 403


@pytest.mark.parametrize("path, body, headers", [
    ("/api/label", "{not json", None),
    ("/api/label", "\xff\xfe", None),
    ("/api/label", {"id": "999999", "label": 1}, None),
    ("/api/label", {"id": IDS[1], "label": 2}, None),
    ("/api/label", {"id": IDS[1], "label": True}, None),
    ("/api/label", {"id": IDS[1], "label": "1"}, None),
    ("/api/label", {"id": IDS[1]}, None),
    ("/api/label", {"id": IDS[1], "label": 1, "extra": 0}, None),
    ("/api/label", [IDS[1], 1], None),
    ("/api/label", json.dumps({"id": IDS[1], "label": 1, "pad": "x" * 20_000}), None),
    ("/api/label", json.dumps({"id": IDS[1], "label": 1}), {"Content-Type": "text/plain"}),
    ("/api/skip", {"id": 7}, None),
    ("/api/skip", {}, None),
    ("/api/undo", {"id": IDS[0]}, None),
])
def test_malformed_posts_change_nothing(server, folder, path, body, headers):
    post(server, "/api/label", {"id": IDS[0], "label": 1})  # so there is a file to protect
    before = (folder / "labels.jsonl").read_bytes()
    status, data = request(server, "POST", path, body, headers)
    assert status == 400 and "error" in json.loads(data)
    assert (folder / "labels.jsonl").read_bytes() == before
    assert not (folder / "skipped.json").exists()
    assert state(server)["next"]["id"] == IDS[1]


def test_post_to_unknown_route_is_404(server):
    assert request(server, "POST", "/api/delete", {})[0] == 404


def test_binds_to_loopback_only(folder):
    with pytest.raises(ValueError, match="the labeling server binds to loopback only"):
        serve(folder, port=0, host="0.0.0.0")


def test_malformed_labels_line_names_the_line(folder):
    good = json.dumps(expected_row(0, 1))
    (folder / "labels.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"labels\.jsonl, line 2: not valid JSON"):
        serve(folder, port=0)
    (folder / "labels.jsonl").write_text(good + "\n" + json.dumps({"id": IDS[1], "label": 5}) + "\n")
    with pytest.raises(ValueError, match=r"labels\.jsonl, line 2: label must be 0 or 1"):
        serve(folder, port=0)


def test_command_line_prints_url_and_summary(folder):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiny_rlhf_t2i.label", str(folder), "--port", "0"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("labeling 6 images in") and "http://127.0.0.1:" in first
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert "labeled 0/6, skipped 0" in rest and proc.returncode == 0
    finally:
        proc.kill()


def test_deeply_nested_json_is_a_bad_request_and_the_server_keeps_serving(server):
    """Within the size limit, 5,000 nested brackets overflow the JSON parser's recursion:
    answer 400 (it used to drop the connection without a response) and stay up."""
    status, data = request(server, "POST", "/api/label", "[" * 5000 + "]" * 5000)
    assert status == 400 and json.loads(data) == {"error": "body is not valid JSON"}
    assert state(server)["progress"]["total"] == len(IDS)
