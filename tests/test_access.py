"""Who may reach the server: the Host names it serves, JSON bodies, and the origins allowed by CORS."""

import pytest

pytest.importorskip("starlette", reason="charrnn serve needs the serve extra: pip install -e '.[serve]'")

from charrnn.errors import UsageError  # noqa: E402
from charrnn.serving.access import Access, check_allow_hosts, check_origins, host_name, is_json  # noqa: E402


def test_host_names_are_read_without_port_brackets_or_case():
    assert host_name("LocalHost:8000") == "localhost" and host_name("[::1]:8000") == "::1"
    assert host_name("example.com.") == "example.com" and host_name("192.0.2.7") == "192.0.2.7"


def test_a_loopback_server_serves_its_addresses_and_localhost_and_the_names_allowed():
    local = Access("127.0.0.1")
    for ok in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "10.0.0.5:8000", None):
        assert local.allows(ok), ok
    for rebound in ("evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io:8000"):
        assert not local.allows(rebound), rebound
    assert Access("127.0.0.1", api_key="k").allows("evil.example") is False  # a key does not open a local server
    assert Access("127.0.0.1", allow_hosts=("box.lan",)).allows("BOX.lan:8000")
    assert Access("127.0.0.1", allow_hosts=("*",)).allows("anything.example")


def test_a_server_open_to_the_network_serves_any_name_only_with_an_api_key():
    assert Access("0.0.0.0").allows("192.168.1.5:8000") and not Access("0.0.0.0").allows("box.lan:8000")
    assert Access("0.0.0.0", allow_hosts=("box.lan",)).allows("box.lan:8000")
    assert Access("0.0.0.0", api_key="secret").allows("box.lan:8000")
    assert Access("::", api_key="secret").allows("box.lan") and not Access("::1", api_key="k").allows("box.lan")


def test_json_content_types_and_flag_values():
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    assert not is_json("text/plain") and not is_json(None) and not is_json("application/x-www-form-urlencoded")
    check_allow_hosts(["box.lan", "192.168.1.5", "*"])
    check_origins(["http://localhost:3000", "https://app.example", "*"])
    for bad in (["http://box.lan"], ["box.lan:8000"], [""]):
        with pytest.raises(UsageError, match="--allow-host"):
            check_allow_hosts(bad)
    for bad in (["localhost:3000"], ["http://app.example/page"], ["ftp://x"]):
        with pytest.raises(UsageError, match="--cors"):
            check_origins(bad)
