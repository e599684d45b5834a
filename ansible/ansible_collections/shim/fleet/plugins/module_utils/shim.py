# -*- coding: utf-8 -*-
# Copyright: shim contributors
# Apache License 2.0 (see LICENSE at the root of the shim repository)
"""Running shim on the managed host and reading its machine-readable output.

The contract read here (docs/fleet.md, "The contract"; pinned by a unit test in shim):

* ``shim upgrade|rollback --json`` prints one JSON object per line on stdout: one per step,
  ``{"step", "ok", "ms", "details"[, "error"]}``, then on success one closing line
  ``{"result": "ok"|"dry-run", "service", "revision", "deployment", "changed", "ms"}``.
* On failure shim prints ``shim: error: MESSAGE`` on stderr; a bail-out's message ends with
  sections ``--- last journal lines of UNIT ---`` followed by those lines.
* Exit codes: 0 success, 1 the operation failed, 2 bad input (nothing was changed).
* ``shim status --json`` prints a JSON array of instances (``service``, ``process``,
  ``instance``, ``revision``, ``deployment``, ``state``, ``unit``, ...).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

ERROR_PREFIX = "shim: error: "
JOURNAL_HEADER = re.compile(r"^--- last journal lines of (\S+) ---$")


def parse_output(stdout):
    """Splits shim's --json stdout into (steps, closing line or None, other lines)."""
    steps, closing, other = [], None, []
    for line in (stdout or "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(obj, dict) and "step" in obj:
            steps.append(obj)
        elif isinstance(obj, dict) and "result" in obj:
            closing = obj
        else:
            other.append(line)
    return steps, closing, other


def parse_error(stderr):
    """shim's error message (without the ``shim: error:`` prefix) and the journal lines of
    the failed instances it names: (message, {unit: [line, ...]})."""
    text = stderr or ""
    start = text.find(ERROR_PREFIX)
    if start >= 0:
        text = text[start + len(ERROR_PREFIX):]
    message, journal, unit = [], {}, None
    for line in text.splitlines():
        m = JOURNAL_HEADER.match(line.strip())
        if m:
            unit = m.group(1)
            journal[unit] = []
        elif unit is not None:
            journal[unit].append(line)
        else:
            message.append(line)
    return "\n".join(message).strip(), journal


def summarize(instances, service=None):
    """Per service: the revision(s) and deployment(s) its instances run, and how many."""
    services = {}
    for inst in instances or []:
        name = inst.get("service")
        if service is not None and name != service:
            continue
        s = services.setdefault(name, {"revisions": [], "deployments": [], "instances": 0, "active": 0})
        s["instances"] += 1
        if inst.get("state") == "active":
            s["active"] += 1
        for key, field in (("revisions", "revision"), ("deployments", "deployment")):
            value = inst.get(field)
            if value is not None and value not in s[key]:
                s[key].append(value)
    if service is not None and service not in services:
        services[service] = {"revisions": [], "deployments": [], "instances": 0, "active": 0}
    for s in services.values():
        s["revisions"].sort()
        s["deployments"].sort()
        # One value when all instances agree; None when none runs or they disagree.
        s["revision"] = s["revisions"][0] if len(s["revisions"]) == 1 else None
        s["deployment"] = s["deployments"][0] if len(s["deployments"]) == 1 else None
    return services


def base_command(module):
    """The shim executable (and --config) from the module's parameters."""
    shim = module.params.get("shim") or "shim"
    if "/" not in shim:
        shim = module.get_bin_path(shim, required=True)
    cmd = [shim]
    if module.params.get("config"):
        cmd += ["--config", module.params["config"]]
    return cmd


def status(module, service=None):
    """``shim status --json`` (of one service, or all): (rc, instances, stderr)."""
    cmd = base_command(module) + ["status", "--json"]
    if service:
        cmd += ["--id", service]
    rc, out, err = module.run_command(cmd)
    if rc != EXIT_OK:
        return rc, None, err
    try:
        instances = json.loads(out)
    except ValueError as e:
        return EXIT_FAILED, None, "shim status --json printed no JSON array (%s): %s" % (e, out[:500])
    return rc, instances, err


def current(module, service):
    """(revision, deployment) the service's instances run now (None, None if none run)."""
    rc, instances, err = status(module, service)
    if rc != EXIT_OK:
        message, _ = parse_error(err)
        module.fail_json(
            msg="shim status of %s failed (exit %d): %s" % (service, rc, message or err),
            rc=rc,
            bad_input=(rc == EXIT_BAD_INPUT),
        )
    s = summarize(instances, service).get(service, {})
    return s.get("revision"), s.get("deployment")


def converge(module, verb, service, revision=None):
    """Runs ``shim VERB --id SERVICE --json`` (``--dry-run`` in check mode) and exits the
    module with its result: exit_json on success, fail_json with shim's message, the failed
    step and the instances' journal lines when shim fails."""
    p = module.params
    before_rev, before_dep = current(module, service)
    cmd = base_command(module) + [verb, "--id", service, "--json"]
    if revision:
        cmd += ["--revision", revision]
    if p.get("timeout"):
        cmd += ["--timeout", duration(p["timeout"])]
    if p.get("lock_timeout"):
        cmd += ["--lock-timeout", duration(p["lock_timeout"])]
    if module.check_mode:
        cmd.append("--dry-run")
    rc, out, err = module.run_command(cmd)
    steps, closing, other = parse_output(out)
    result = dict(
        cmd=cmd,
        rc=rc,
        service=service,
        steps=steps,
        revision_before=before_rev,
        deployment_before=before_dep,
    )
    if rc != EXIT_OK or closing is None:
        fail(module, verb, service, rc, err, steps, other, result)
    result.update(
        changed=bool(closing.get("changed")),
        revision=closing.get("revision"),
        deployment=closing.get("deployment"),
        ms=closing.get("ms"),
        dry_run=closing.get("result") == "dry-run",
    )
    if module.check_mode:
        # would_change too: a play that reports the plan with changed_when: false reads it.
        result.update(
            revision_after=closing.get("revision"),
            deployment_after=closing.get("deployment"),
            would_change=result["changed"],
        )
    else:
        result["revision_after"], result["deployment_after"] = current(module, service)
    module.exit_json(**result)


def fail(module, verb, service, rc, err, steps, other, result):
    """fail_json for a shim command that failed (or printed no closing line)."""
    message, journal = parse_error(err)
    if rc == EXIT_OK:
        message = "shim %s printed no closing JSON line (is this shim too old for the module?): %s" % (
            verb,
            " | ".join(other)[:500],
        )
        rc = EXIT_FAILED
    failed = [s for s in steps if not s.get("ok", True)]
    # What serves now, after the failure (best effort: the status call may fail as well).
    s_rc, instances, _ = status(module, service)
    if s_rc == EXIT_OK:
        s = summarize(instances, service).get(service, {})
        result.update(revision_after=s.get("revision"), deployment_after=s.get("deployment"))
    # A bail-out leaves the host as it was; a failure after the switch (stop-old, record)
    # leaves the new deployment serving: changed says which.
    changed = result.get("deployment_after") not in (None, result.get("deployment_before"))
    result.update(
        rc=rc,
        changed=changed,
        bad_input=(rc == EXIT_BAD_INPUT),
        failed_step=failed[-1]["step"] if failed else None,
        journal=journal,
    )
    # The failed step's error repeats the journal lines of `journal`: keep them once.
    for s in failed:
        if "error" in s:
            s["error"] = parse_error(s["error"])[0]
    module.fail_json(msg=message or ("shim %s of %s failed (exit %d)" % (verb, service, rc)), **result)


def duration(value):
    """A shim duration: "90s", "2min" as given; a bare number is seconds."""
    value = str(value).strip()
    return value + "s" if value.isdigit() else value
