# -*- coding: utf-8 -*-
# Copyright: shim contributors
# Apache License 2.0 (see LICENSE at the root of the shim repository)
"""Unit tests of the parsing of shim's output (the contract in docs/fleet.md), on output
recorded from shim itself. Run: PYTHONPATH=ansible python3 -m unittest discover -s
ansible/ansible_collections/shim/fleet/tests/unit"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import unittest

from ansible_collections.shim.fleet.plugins.module_utils.shim import converge, duration, parse_error, parse_output, summarize

UPGRADE_OK = """\
{"step":"fetch","ok":true,"ms":574,"details":["image oci:/var/lib/images/hello:v1 (sha256:6ec9)"]}
{"step":"lock","ok":true,"ms":0,"details":[]}
{"step":"plan","ok":true,"ms":4,"details":["start 2 new instance(s) of v1"]}
{"step":"health","ok":true,"ms":12,"details":["shim-hello-web-v1-c10603ab-1.service healthy after 6 ms"]}
{"changed":true,"deployment":"aa50ebfae98c","ms":780,"result":"ok","revision":"v1","service":"hello"}
"""

DRY_RUN = """\
{"step":"fetch","ok":true,"ms":3,"details":[]}
{"step":"plan","ok":true,"ms":0,"details":["nothing to do: deployment aa50ebfae98c of v1 runs in full"]}
{"changed":false,"deployment":"aa50ebfae98c","ms":5,"result":"dry-run","revision":"v1","service":"hello"}
"""

BAIL_OUT = """\
shim: error: upgrade of hello to bad bailed out; v1 is still serving: 2 instance(s) of bad did not become healthy:
  shim-hello-web-bad-b5963a91-1.service: not healthy within 3s: last check HTTP 500 on :20002/health
--- last journal lines of shim-hello-web-bad-b5963a91-1.service ---
Dec 02 00:53:30.519338 shim-sandbox hello-web-1[2837]: GET /health HTTP/1.1
Dec 02 00:53:30.545714 shim-sandbox hello-web-1[2837]: GET /health HTTP/1.1
--- last journal lines of shim-hello-web-bad-b5963a91-2.service ---
Dec 02 00:53:30.519841 shim-sandbox hello-web-2[2847]: GET /health HTTP/1.1
"""


class ParseOutput(unittest.TestCase):
    def test_steps_and_closing_line(self):
        steps, closing, other = parse_output(UPGRADE_OK)
        self.assertEqual([s["step"] for s in steps], ["fetch", "lock", "plan", "health"])
        self.assertEqual(steps[0]["ms"], 574)
        self.assertEqual(closing["result"], "ok")
        self.assertTrue(closing["changed"])
        self.assertEqual(closing["deployment"], "aa50ebfae98c")
        self.assertEqual(other, [])

    def test_dry_run_says_whether_it_would_change(self):
        _, closing, _ = parse_output(DRY_RUN)
        self.assertEqual(closing["result"], "dry-run")
        self.assertFalse(closing["changed"])

    def test_no_closing_line_and_stray_text(self):
        steps, closing, other = parse_output('{"step":"fetch","ok":false,"ms":7,"details":[],"error":"x"}\nnot json\n')
        self.assertIsNone(closing)
        self.assertFalse(steps[0]["ok"])
        self.assertEqual(other, ["not json"])


class ParseError(unittest.TestCase):
    def test_message_and_journal_by_unit(self):
        message, journal = parse_error(BAIL_OUT)
        self.assertTrue(message.startswith("upgrade of hello to bad bailed out; v1 is still serving"))
        self.assertIn("HTTP 500", message)
        self.assertNotIn("GET /health", message)
        self.assertEqual(sorted(journal), ["shim-hello-web-bad-b5963a91-1.service", "shim-hello-web-bad-b5963a91-2.service"])
        self.assertEqual(len(journal["shim-hello-web-bad-b5963a91-1.service"]), 2)

    def test_plain_error(self):
        message, journal = parse_error('shim: error: --id: no service "nope" is defined (known: hello)\n')
        self.assertEqual(message, '--id: no service "nope" is defined (known: hello)')
        self.assertEqual(journal, {})


class Summarize(unittest.TestCase):
    def test_revision_when_all_agree(self):
        inst = [
            {"service": "hello", "revision": "v1", "deployment": "d1", "state": "active"},
            {"service": "hello", "revision": "v1", "deployment": "d1", "state": "active"},
            {"service": "hello-2", "revision": "v9", "deployment": "d9", "state": "active"},
        ]
        s = summarize(inst, "hello")
        self.assertEqual(list(s), ["hello"])
        self.assertEqual((s["hello"]["revision"], s["hello"]["instances"]), ("v1", 2))

    def test_none_when_mixed_or_empty(self):
        inst = [
            {"service": "hello", "revision": "v1", "deployment": "d1", "state": "active"},
            {"service": "hello", "revision": "v2", "deployment": "d2", "state": "failed"},
        ]
        s = summarize(inst)["hello"]
        self.assertIsNone(s["revision"])
        self.assertEqual((s["revisions"], s["active"]), (["v1", "v2"], 1))
        self.assertIsNone(summarize([], "hello")["hello"]["revision"])

    def test_duration(self):
        self.assertEqual(duration(90), "90s")
        self.assertEqual(duration("2min"), "2min")


STATUS_V1 = '[{"service": "hello", "revision": "v1", "deployment": "d1", "state": "active"}]'
STATUS_V2 = '[{"service": "hello", "revision": "v2", "deployment": "d2", "state": "active"}]'


class Exit(Exception):
    pass


class FakeModule:
    """What converge uses of AnsibleModule; run_command answers from a script."""

    def __init__(self, answers, check_mode=False):
        self.params = {"shim": "/usr/bin/shim", "config": None, "timeout": "30", "lock_timeout": None}
        self.check_mode = check_mode
        self.answers = list(answers)
        self.commands = []
        self.result = None

    def run_command(self, cmd):
        self.commands.append(cmd)
        return self.answers.pop(0)

    def exit_json(self, **kw):
        self.result = dict(kw, failed=False)
        raise Exit()

    def fail_json(self, **kw):
        self.result = dict(kw, failed=True)
        raise Exit()


def run(module, verb="upgrade", revision="v2"):
    try:
        converge(module, verb, "hello", revision)
    except Exit:
        return module.result
    raise AssertionError("converge returned without exit_json or fail_json")


class Converge(unittest.TestCase):
    def test_success_reports_before_and_after(self):
        closing = '{"changed":true,"deployment":"d2","ms":9,"result":"ok","revision":"v2","service":"hello"}\n'
        m = FakeModule([(0, STATUS_V1, ""), (0, UPGRADE_OK.splitlines()[0] + "\n" + closing, ""), (0, STATUS_V2, "")])
        r = run(m)
        self.assertFalse(r["failed"])
        self.assertEqual(m.commands[1], ["/usr/bin/shim", "upgrade", "--id", "hello", "--json", "--revision", "v2", "--timeout", "30s"])
        self.assertEqual((r["changed"], r["revision_before"], r["revision_after"], r["deployment"]), (True, "v1", "v2", "d2"))

    def test_check_mode_runs_a_dry_run(self):
        m = FakeModule([(0, STATUS_V1, ""), (0, DRY_RUN, "")], check_mode=True)
        r = run(m)
        self.assertIn("--dry-run", m.commands[1])
        self.assertEqual(len(m.commands), 2)
        self.assertFalse(r["changed"])
        self.assertFalse(r["would_change"])

    def test_bail_out_fails_with_shims_message_and_journal(self):
        failed_step = '{"step":"health","ok":false,"ms":3018,"details":[],"error":"x\\n--- last journal lines of u ---\\nline"}\n'
        m = FakeModule([(0, STATUS_V1, ""), (1, failed_step, BAIL_OUT), (0, STATUS_V1, "")])
        r = run(m, revision="bad")
        self.assertTrue(r["failed"])
        self.assertTrue(r["msg"].startswith("upgrade of hello to bad bailed out; v1 is still serving"))
        self.assertEqual((r["failed_step"], r["rc"], r["changed"], r["bad_input"]), ("health", 1, False, False))
        self.assertEqual(r["revision_after"], "v1")
        self.assertEqual(len(r["journal"]), 2)
        self.assertEqual(r["steps"][0]["error"], "x")

    def test_failure_after_the_switch_is_a_change(self):
        m = FakeModule([(0, STATUS_V1, ""), (1, "", "shim: error: stopping failed for: u\n"), (0, STATUS_V2, "")])
        r = run(m)
        self.assertTrue(r["failed"])
        self.assertTrue(r["changed"])
        self.assertEqual(r["msg"], "stopping failed for: u")

    def test_bad_input(self):
        m = FakeModule([(0, STATUS_V1, ""), (2, "", 'shim: error: tag "nope" not found\n'), (0, STATUS_V1, "")])
        r = run(m, revision="nope")
        self.assertEqual((r["rc"], r["bad_input"], r["changed"]), (2, True, False))

    def test_a_shim_without_a_closing_line_fails(self):
        m = FakeModule([(0, STATUS_V1, ""), (0, "upgrade hello to v2\n  fetch ok\n", ""), (0, STATUS_V1, "")])
        r = run(m)
        self.assertTrue(r["failed"])
        self.assertIn("no closing JSON line", r["msg"])


if __name__ == "__main__":
    unittest.main()
