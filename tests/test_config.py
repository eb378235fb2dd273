"""Configuration: cvmfs files in the real order, environment, PARROT_CVMFS_REPO."""

from __future__ import annotations

import os

import pytest

from parrot_cvmfs.client.config import Configuration, expand_templates, parse_parrot_repos
from parrot_cvmfs.client.network import parse_proxy_groups, strip_direct
from parrot_cvmfs.errors import ConfigError

from .conftest import base_env


def test_shipped_domains_need_no_configuration():
    c = Configuration(env=base_env())
    alice = c.settings("alice")
    assert alice.fqrn == "alice.cern.ch"
    assert all(u.endswith("/cvmfs/alice.cern.ch") for u in alice.server_urls)
    assert {os.path.basename(k) for k in alice.public_key_files} >= {
        "cern-it1.cern.ch.pub",
        "cern-it4.cern.ch.pub",
        "cern-it5.cern.ch.pub",
    }
    assert all(os.path.exists(k) for k in alice.public_key_files)
    for name, key in [
        ("software.eessi.io", "eessi.io.pub"),
        ("icecube.opensciencegrid.org", "opensciencegrid.org.pub"),
        ("pheno.egi.eu", "egi.eu.pub"),
    ]:
        s = c.settings(name)
        assert s.server_urls and [os.path.basename(k) for k in s.public_key_files] == [key]
    # with a site proxy the domain files choose the stratum 1s and keep fallback proxies
    squid = Configuration(env=base_env(CVMFS_HTTP_PROXY="http://squid.example:3128"))
    atlas = squid.settings("atlas.cern.ch")
    assert atlas.server_urls[0] == "http://cvmfs-stratum-one.cern.ch:8000/cvmfs/atlas.cern.ch"
    assert atlas.get("CVMFS_HTTP_PROXY") == "http://squid.example:3128"
    assert atlas.get("CVMFS_FALLBACK_PROXY")


def test_file_order_and_local_overrides(tmp_path):
    etc = tmp_path / "etc"
    for d in ("default.d", "domain.d", "config.d"):
        (etc / d).mkdir(parents=True)
    (etc / "default.conf").write_text("CVMFS_TIMEOUT=11\nCVMFS_X=default\n")
    (etc / "default.d" / "50-site.conf").write_text("CVMFS_X=default.d\nCVMFS_Y=$CVMFS_X\n")
    (etc / "default.local").write_text("CVMFS_Z=local\n")
    (etc / "domain.d" / "example.org.conf").write_text(
        'CVMFS_SERVER_URL="http://s1/cvmfs/@fqrn@;http://s2/@org@"\n'
        'if [ "$CVMFS_FQRN" = "repo.example.org" ]; then CVMFS_W=fqrn-seen; fi\nCVMFS_W=$CVMFS_W\n'
    )
    (etc / "domain.d" / "example.org.local").write_text("CVMFS_X=domain.local\n")
    (etc / "config.d" / "repo.example.org.conf").write_text(". ../common.sh\nCVMFS_V=$V\n")
    (etc / "common.sh").write_text("V=sourced-relative\n")
    (etc / "config.d" / "repo.example.org.local").write_text("CVMFS_TIMEOUT=42  # comment\n")
    c = Configuration(env=base_env(), config_dir=str(etc))
    s = c.settings("repo.example.org")
    assert s.server_urls == ["http://s1/cvmfs/repo.example.org", "http://s2/repo"]
    assert s.get("CVMFS_X") == "domain.local"
    assert s.get("CVMFS_Y") == "default.d"
    assert s.get("CVMFS_Z") == "local"
    assert s.get("CVMFS_TIMEOUT") == "42"
    assert s.get("CVMFS_W") == "fqrn-seen"
    assert s.get("CVMFS_V") == "sourced-relative"
    # the environment wins over files, explicit overrides over everything
    c = Configuration(
        env=base_env(CVMFS_TIMEOUT="7"), config_dir=str(etc), overrides={"CVMFS_Z": "cli"}
    )
    s = c.settings("repo.example.org")
    assert s.get("CVMFS_TIMEOUT") == "7" and s.get("CVMFS_Z") == "cli"
    (etc / "config.d" / "broken.example.org.conf").write_text("if then fi\n")
    with pytest.raises(ConfigError, match="broken.example.org.conf failed to evaluate"):
        Configuration(env=base_env(), config_dir=str(etc)).settings("broken.example.org")


def test_parrot_cvmfs_repo_syntax():
    spec = (
        r"*.example.org:url=http://s1/cvmfs/*.example.org;http://s2/cvmfs/*,pubkey=/k/a.pub:/k/b.pub "
        r"special.example.org:url=http://x\,y/cvmfs/special,proxies=http://p1|http://p2;DIRECT "
        r"<default-repositories>:timeout=9"
    )
    entries = parse_parrot_repos(spec)
    assert [e.pattern for e in entries][:2] == ["*.example.org", "special.example.org"]
    c = Configuration(env=base_env(PARROT_CVMFS_REPO=spec))
    a = c.settings("atlas.example.org")
    assert a.server_urls == ["http://s1/cvmfs/atlas.example.org", "http://s2/cvmfs/atlas"]
    assert a.get("CVMFS_PUBLIC_KEY") == "/k/a.pub:/k/b.pub"
    s = c.settings("special.example.org")  # later entries win over the wildcard
    assert s.server_urls == ["http://x,y/cvmfs/special"]
    assert s.get("CVMFS_HTTP_PROXY") == "http://p1|http://p2;DIRECT"
    assert c.settings("lhcb.cern.ch").get("CVMFS_TIMEOUT") == "9"
    assert c.configured_names() == ["special.example.org"]
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        Configuration(env=base_env(PARROT_CVMFS_REPO="a.example.org:bogus=1")).settings(
            "a.example.org"
        )
    with pytest.raises(ConfigError, match="deep mounts"):
        parse_parrot_repos("a.example.org/sub:url=http://x")


def test_templates_and_proxy_groups():
    assert (
        expand_templates("/this/is/@a@/test/@fqrn@foo/@org@/@fourtytwo@a@bc", "atlas.cern.ch")
        == "/this/is/@a@/test/atlas.cern.chfoo/atlas/@fourtytwo@a@bc"
    )
    assert parse_proxy_groups("A|DIRECT;C|D;E|F;DIRECT") == [
        ["http://A", "DIRECT"],
        ["http://C", "http://D"],
        ["http://E", "http://F"],
        ["DIRECT"],
    ]
    assert strip_direct(parse_proxy_groups("A|DIRECT;C|D;E|F;DIRECT")) == [
        ["http://A"],
        ["http://C", "http://D"],
        ["http://E", "http://F"],
    ]
    assert parse_proxy_groups(";||;;;|||") == []
    assert parse_proxy_groups("auto;DIRECT") == [["DIRECT"]]


def test_shell_answers_are_kept_while_their_inputs_stay(tmp_path):
    etc, memo = tmp_path / "etc", tmp_path / "memo"
    (etc / "config.d").mkdir(parents=True)
    conf = etc / "config.d" / "repo.example.org.conf"
    conf.write_text('CVMFS_SERVER_URL="http://$SITE_HOST/cvmfs/@fqrn@"\nCVMFS_T=$((2 + 3))\n')

    def settings(env_host: str):
        c = Configuration(env=base_env(SITE_HOST=env_host), config_dir=str(etc))
        c.memo_dir = str(memo)
        return c.settings("repo.example.org")

    s = settings("a.example")
    assert s.server_urls == ["http://a.example/cvmfs/repo.example.org"] and s.get("CVMFS_T") == "5"
    (kept,) = memo.iterdir()
    assert kept.name.endswith(f".{os.getuid()}") and kept.stat().st_mode & 0o022 == 0
    # the kept answer is what is used: doctor it and it shows
    kept.write_bytes(kept.read_bytes().replace(b"a.example", b"doctored"))
    assert settings("a.example").server_urls == ["http://doctored/cvmfs/repo.example.org"]
    # a variable the files name, and the files' text, are part of the key
    assert settings("b.example").server_urls == ["http://b.example/cvmfs/repo.example.org"]
    conf.write_text('CVMFS_SERVER_URL="http://$SITE_HOST/v2/@fqrn@"\n')
    assert settings("a.example").server_urls == ["http://a.example/v2/repo.example.org"]
    assert len(list(memo.iterdir())) == 3
    # another user's file is not trusted (a shared cache), nor a group-writable one
    for f in memo.iterdir():
        f.write_bytes(f.read_bytes().replace(b"a.example", b"planted"))
    os.chmod(next(iter(sorted(memo.iterdir()))), 0o666)
    if os.getuid() == 0:
        for f in memo.iterdir():
            os.chown(f, 65534, 65534)
    assert settings("a.example").server_urls == ["http://a.example/v2/repo.example.org"]


def test_files_that_run_commands_are_evaluated_every_time(tmp_path):
    etc, memo = tmp_path / "etc", tmp_path / "memo"
    (etc / "config.d").mkdir(parents=True)
    counter = tmp_path / "n"
    counter.write_text("0")
    for text in (
        f"CVMFS_N=$(cat {counter})\n",
        f"CVMFS_N=`cat {counter}`\n",
        f"CVMFS_N=\nread CVMFS_N < {counter}\n",
    ):
        (etc / "config.d" / "repo.example.org.conf").write_text(text)
        for n in ("1", "2"):
            counter.write_text(n)
            c = Configuration(env=base_env(), config_dir=str(etc))
            c.memo_dir = str(memo)
            assert c.settings("repo.example.org").get("CVMFS_N") == n, text
    assert not memo.exists()


def test_http_urls_for_the_c_fetcher():
    from urllib.parse import urlsplit

    from parrot_cvmfs.client.cfetch import _http_parts

    for url in (
        "http://127.0.0.1:8999/cvmfs/x.example.org",
        "http://Stratum.Example.org/cvmfs/@fqrn@",
        "http://squid:3128",
        "http://[::1]:8000/p",
        "HTTP://h/x",
        "http://user@h:1/p?q#f",
    ):
        u = urlsplit(url)
        assert _http_parts(url) == (u.hostname, u.port or 80, u.netloc, u.path), url
    for url in ("https://h/p", "http://h:port/", "http://:80/x", "http://[::1/x", "ftp://h/"):
        assert _http_parts(url) is None, url
