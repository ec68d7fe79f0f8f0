#!/usr/bin/env python3
"""Integration tests of `marlin serve` with the official `openai` client.

Starts a real server on loopback with the demo model, then checks chat,
completions, streaming, usage, stop strings, seeds, n, logprobs,
json_object, greedy equality with `marlin run --temperature 0` (alone and
under concurrency 32), the bad-request matrix (each case a 4xx in OpenAI's
error shape, the server healthy afterwards), the queue-full 429, a load test
with clients that disconnect mid-stream (zero errors, every KV block free
afterwards), and graceful shutdown on SIGTERM.

    python3 scripts/server/test_server.py [--marlin target/release/marlin] [--model PATH]

Ends with one line: `server tests: N passed, M failed`.
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

KEY = "test-key-123"
NAME = "smollm2"
RESULTS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, marlin, model, extra=(), key=KEY):
        self.port = free_port()
        self.key = key
        args = [marlin, "serve", model, "--host", "127.0.0.1", "--port", str(self.port),
                "--served-model-name", NAME, "--threads", "2", *extra]
        if key:
            args += ["--api-key", key]
        self.log = open(f"/tmp/marlin-serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log {self.log.name}")
            try:
                if self.raw("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError("server did not become healthy in 120 s")

    def raw(self, method, path, body=None, headers=None, timeout=120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {} if headers is None else dict(headers)
        if body is not None and "Content-Type" not in h and "content-type" not in h:
            h["Content-Type"] = "application/json"
        if self.key and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.key}"
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), payload

    def client(self):
        # Imported here: bench_serve.py and the GPU machine (no openai
        # package there) use this module's raw HTTP helpers only.
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.key or "none",
                             max_retries=0, timeout=300)

    def metrics(self):
        _, _, body = self.raw("GET", "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.rsplit(" ", 1)
            out[re.sub(r"\{.*\}", "", name) if "_bucket" not in name else name] = float(value)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def case(name):
    def deco(fn):
        def run(*a, **kw):
            t0 = time.time()
            try:
                fn(*a, **kw)
                RESULTS.append((name, True, ""))
                print(f"ok   {name} ({time.time() - t0:.1f}s)", flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure and go on
                RESULTS.append((name, False, repr(e)))
                print(f"FAIL {name}: {e!r}", flush=True)
                traceback.print_exc()
        return run
    return deco


def marlin_run_greedy(marlin, model, prompt, n):
    out = subprocess.run([marlin, "run", model, prompt, "--temperature", "0", "--max-tokens", str(n),
                          "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # `marlin run` echoes a raw prompt and ends with a newline.
    assert out.stdout.startswith(prompt) and out.stdout.endswith("\n"), out.stdout
    return out.stdout[len(prompt):-1]


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "List three colors: 1."]


@case("GET /v1/models")
def t_models(s):
    models = s.client().models.list()
    assert [m.id for m in models.data] == [NAME], models


@case("chat completion, greedy, usage, finish_reason length")
def t_chat(s):
    r = s.client().chat.completions.create(model=NAME, messages=[{"role": "user", "content": "What is 2+2?"}],
                                           max_tokens=12, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content, r
    assert c.finish_reason in ("length", "stop"), c.finish_reason
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 12


@case("streaming chat equals non-streaming; include_usage")
def t_stream(s):
    cl = s.client()
    msgs = [{"role": "user", "content": "Name a fruit."}]
    full = cl.chat.completions.create(model=NAME, messages=msgs, max_tokens=16, temperature=0)
    text, usage, reasons = "", None, []
    for ch in cl.chat.completions.create(model=NAME, messages=msgs, max_tokens=16, temperature=0, stream=True,
                                         stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert text == full.choices[0].message.content, (text, full.choices[0].message.content)
    assert reasons == [full.choices[0].finish_reason], reasons
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens, usage


@case("completions endpoint equals `marlin run --temperature 0`")
def t_completion_matches_run(s, marlin, model):
    for p in PROMPTS[:2]:
        r = s.client().completions.create(model=NAME, prompt=p, max_tokens=24, temperature=0)
        expected = marlin_run_greedy(marlin, model, p, 24)
        assert r.choices[0].text == expected, (p, r.choices[0].text, expected)


@case("stop string ends generation with finish_reason stop")
def t_stop(s):
    cl = s.client()
    base = cl.completions.create(model=NAME, prompt=PROMPTS[2], max_tokens=24, temperature=0).choices[0].text
    words = [w for w in base.split(" ") if len(w) >= 2]
    assert words, base
    stop = words[min(2, len(words) - 1)]
    r = cl.completions.create(model=NAME, prompt=PROMPTS[2], max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop", r
    assert stop not in r.choices[0].text and base.startswith(r.choices[0].text), (stop, r.choices[0].text, base)


@case("same seed, same output; n=2 choices")
def t_seed(s):
    cl = s.client()
    kw = dict(model=NAME, prompt=PROMPTS[2], max_tokens=20, temperature=0.9, top_p=0.95)
    a = cl.completions.create(seed=1234, **kw).choices[0].text
    b = cl.completions.create(seed=1234, **kw).choices[0].text
    assert a == b, (a, b)
    r = cl.completions.create(seed=7, n=2, **kw)
    assert len(r.choices) == 2 and {c.index for c in r.choices} == {0, 1}
    # usage counts the tokens of both choices.
    assert 2 <= r.usage.completion_tokens <= 40, r.usage
    assert all(c.text for c in r.choices), r.choices


@case("logprobs and top_logprobs")
def t_logprobs(s):
    r = s.client().chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                           temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    for lp in content:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert abs(lp.top_logprobs[0].logprob - lp.logprob) < 1e-4, lp


@case("response_format json_object gives valid JSON")
def t_json(s):
    r = s.client().chat.completions.create(
        model=NAME, max_tokens=64, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}])
    c = r.choices[0]
    if c.finish_reason == "stop":
        json.loads(c.message.content)
    else:  # cut by max_tokens: still a valid JSON prefix starting with an object
        assert c.message.content.lstrip().startswith("{"), c.message.content


def bad_cases():
    ok = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def w(**kw):
        d = dict(ok)
        d.update(kw)
        return json.dumps(d)
    chat = "/v1/chat/completions"
    long_prompt = "hello " * 20000
    return [
        ("bad JSON", "POST", chat, "{", {}, 400),
        ("empty body", "POST", chat, "", {}, 400),
        ("array body", "POST", chat, "[]", {}, 400),
        ("invalid UTF-8", "POST", chat, b'{"model": "\xff\xfe"}', {}, 400),
        ("wrong content type", "POST", chat, w(), {"Content-Type": "text/plain"}, 415),
        ("missing API key", "POST", chat, w(), {"Authorization": ""}, 401),
        ("wrong API key", "POST", chat, w(), {"Authorization": "Bearer nope"}, 401),
        ("unknown model", "POST", chat, w(model="gpt-9"), {}, 404),
        ("unknown route", "POST", "/v1/nothing", w(), {}, 404),
        ("wrong method", "GET", chat, None, {}, 405),
        ("missing model", "POST", chat, json.dumps({"messages": ok["messages"]}), {}, 400),
        ("missing messages", "POST", chat, json.dumps({"model": NAME}), {}, 400),
        ("empty messages", "POST", chat, w(messages=[]), {}, 400),
        ("unknown role", "POST", chat, w(messages=[{"role": "wizard", "content": "x"}]), {}, 400),
        ("content wrong type", "POST", chat, w(messages=[{"role": "user", "content": 5}]), {}, 400),
        ("negative max_tokens", "POST", chat, w(max_tokens=-1), {}, 400),
        ("zero max_tokens", "POST", chat, w(max_tokens=0), {}, 400),
        ("huge max_tokens", "POST", chat, w(max_tokens=10**12), {}, 400),
        ("max_tokens string", "POST", chat, w(max_tokens="5"), {}, 400),
        ("temperature < 0", "POST", chat, w(temperature=-1), {}, 400),
        ("temperature > 2", "POST", chat, w(temperature=3), {}, 400),
        ("top_p 0", "POST", chat, w(top_p=0), {}, 400),
        ("top_p > 1", "POST", chat, w(top_p=1.5), {}, 400),
        ("top_k negative", "POST", chat, w(top_k=-7), {}, 400),
        ("presence_penalty out of range", "POST", chat, w(presence_penalty=5), {}, 400),
        ("frequency_penalty wrong type", "POST", chat, w(frequency_penalty="x"), {}, 400),
        ("seed string", "POST", chat, w(seed="abc"), {}, 400),
        ("n = 0", "POST", chat, w(n=0), {}, 400),
        ("n huge", "POST", chat, w(n=100000), {}, 400),
        ("stop wrong type", "POST", chat, w(stop=7), {}, 400),
        ("too many stops", "POST", chat, w(stop=["a", "b", "c", "d", "e"]), {}, 400),
        ("top_logprobs without logprobs", "POST", chat, w(top_logprobs=2), {}, 400),
        ("top_logprobs too large", "POST", chat, w(logprobs=True, top_logprobs=50), {}, 400),
        ("stream_options without stream", "POST", chat, w(stream_options={"include_usage": True}), {}, 400),
        ("response_format unsupported", "POST", chat, w(response_format={"type": "json_schema"}), {}, 400),
        ("prompt over the context", "POST", chat, w(messages=[{"role": "user", "content": long_prompt}]), {}, 400),
        ("completions without prompt", "POST", "/v1/completions", json.dumps({"model": NAME}), {}, 400),
        ("completions token id out of range", "POST", "/v1/completions",
         json.dumps({"model": NAME, "prompt": [1, 2, 10**9]}), {}, 400),
    ]


@case("bad-request matrix: right 4xx in OpenAI shape, server stays healthy")
def t_bad_requests(s):
    cases = bad_cases()
    assert len(cases) >= 30
    failures = []
    for name, method, path, body, headers, status in cases:
        h = dict(headers)
        if h.get("Authorization") == "":
            h = {k: v for k, v in h.items() if k != "Authorization"}
            code, hdrs, payload = raw_no_auth(s, method, path, body, h)
        else:
            code, hdrs, payload = s.raw(method, path, body, h)
        try:
            err = json.loads(payload)["error"]
            shape_ok = isinstance(err["message"], str) and err["message"] and "type" in err and "param" in err \
                and "code" in err
        except (ValueError, KeyError, TypeError):
            shape_ok = False
        if code != status or not shape_ok:
            failures.append(f"{name}: got {code} {payload[:200]!r}, want {status}")
    assert not failures, "\n".join(failures)
    assert s.raw("GET", "/health")[0] == 200


def raw_no_auth(s, method, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    h = dict(headers)
    h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), payload


def stream_completion(s, prompt, max_tokens, disconnect_after=None):
    """Raw SSE client; returns (text, ttft, itls) or None if it disconnected on purpose."""
    body = json.dumps({"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=600)
    t0 = time.time()
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {s.key}"})
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read()[:300])
    text, times, events = "", [], 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        ev = json.loads(data)
        assert "error" not in ev, ev
        for c in ev["choices"]:
            if c.get("text"):
                text += c["text"]
                times.append(time.time())
        events += 1
        if disconnect_after is not None and events >= disconnect_after:
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            return None
    conn.close()
    ttft = times[0] - t0 if times else None
    itl = [b - a for a, b in zip(times, times[1:])]
    return text, ttft, itl


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


@case("greedy under concurrency 32 equals alone; load test 200 requests with disconnects")
def t_load(s, marlin, model, n_requests=200, concurrency=32):
    expected = {p: marlin_run_greedy(marlin, model, p, 16) for p in PROMPTS}
    m0 = s.metrics()
    rng = random.Random(0)
    jobs = []
    for i in range(n_requests):
        p = PROMPTS[i % len(PROMPTS)]
        jobs.append((p, 16, rng.randint(1, 4) if i % 10 == 3 else None))
    t0 = time.time()
    errors, ttfts, itls, done, mism = [], [], [], 0, []
    with cf.ThreadPoolExecutor(concurrency) as ex:
        futs = {ex.submit(stream_completion, s, p, n, d): (p, d) for p, n, d in jobs}
        for f in cf.as_completed(futs):
            p, d = futs[f]
            try:
                res = f.result()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                continue
            if res is None:
                continue
            text, ttft, itl = res
            done += 1
            if text != expected[p]:
                mism.append((p, text, expected[p]))
            if ttft is not None:
                ttfts.append(ttft)
            itls.extend(itl)
    wall = time.time() - t0
    time.sleep(1.0)
    m = s.metrics()
    print(f"  load: {n_requests} requests (concurrency {concurrency}, {sum(1 for j in jobs if j[2])} disconnect "
          f"mid-stream) in {wall:.1f}s; completed {done}; errors {len(errors)}; "
          f"TTFT p50 {pct(ttfts, 50)*1e3:.0f} ms p90 {pct(ttfts, 90)*1e3:.0f} ms p99 {pct(ttfts, 99)*1e3:.0f} ms; "
          f"ITL p50 {pct(itls, 50)*1e3:.1f} ms p90 {pct(itls, 90)*1e3:.1f} ms p99 {pct(itls, 99)*1e3:.1f} ms",
          flush=True)
    assert not errors, errors[:3]
    assert not mism, mism[:2]
    assert m.get("marlin:num_requests_running", -1) == 0, m
    assert m.get("marlin:kv_cache_usage_perc", -1) == 0, m
    # The engine's own time: steps ran, each whole step at least its pass.
    steps, fwd, busy = (m.get(f"marlin:engine_{k}_total", 0) - m0.get(f"marlin:engine_{k}_total", 0)
                        for k in ("steps", "forward_seconds", "step_seconds"))
    assert steps > 0 and 0 < fwd <= busy <= wall + 1, (steps, fwd, busy, wall)
    print(f"  engine: {steps:.0f} steps, {busy / steps * 1e3:.2f} ms a step ({fwd / steps * 1e3:.2f} ms forward), "
          f"busy {busy / wall:.0%} of the load's wall time", flush=True)


@case("queue full -> 429 with Retry-After")
def t_queue_full(marlin, model):
    s = Server(marlin, model, ["--max-num-seqs", "1", "--max-queue", "1"])
    try:
        body = json.dumps({"model": NAME, "prompt": "Count: 1, 2, 3,", "max_tokens": 64, "temperature": 0})
        with cf.ThreadPoolExecutor(6) as ex:
            res = list(ex.map(lambda _: s.raw("POST", "/v1/completions", body), range(6)))
        codes = [r[0] for r in res]
        assert 429 in codes and 200 in codes, codes
        for code, hdrs, payload in res:
            if code == 429:
                assert any(k.lower() == "retry-after" for k in hdrs), hdrs
                assert json.loads(payload)["error"]["type"] == "rate_limit_error"
        assert s.raw("GET", "/health")[0] == 200
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--marlin", default="target/release/marlin")
    models = os.environ.get("MARLIN_MODELS", "models")
    ap.add_argument("--model", default=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    s = Server(args.marlin, args.model, ["--max-num-seqs", "32", "--max-queue", "256"])
    try:
        t_models(s)
        t_chat(s)
        t_stream(s)
        t_completion_matches_run(s, args.marlin, args.model)
        t_stop(s)
        t_seed(s)
        t_logprobs(s)
        t_json(s)
        t_bad_requests(s)
        t_load(s, args.marlin, args.model, n_requests=args.requests)
    finally:
        rc = s.stop(signal.SIGTERM)
    RESULTS.append(("graceful shutdown on SIGTERM exits 0", rc == 0, f"exit code {rc}"))
    print(f"{'ok  ' if rc == 0 else 'FAIL'} graceful shutdown on SIGTERM (exit {rc})")
    t_queue_full(args.marlin, args.model)
    passed = sum(1 for r in RESULTS if r[1])
    failed = len(RESULTS) - passed
    print(f"server tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
