#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: shim contributors
# Apache License 2.0 (see LICENSE at the root of the shim repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: shim_upgrade
short_description: Deploy a revision of a service with shim, health-gated, on one host
version_added: "1.0.0"
description:
  - Runs C(shim upgrade --id SERVICE --revision REVISION --json) on the managed host and
    reports its steps, their durations and the revision before and after.
  - shim starts the new instances beside the old ones, waits until they are healthy, switches
    nginx to them, then drains and stops the old ones. When anything fails before the switch,
    shim bails out and the old revision keeps serving; the module then fails with shim's
    message, the step that failed and the failed instances' last journal lines.
  - C(changed) is false when the deployment already runs in full (same revision, image
    digest, definition and secrets); then nothing is touched.
  - In check mode runs C(shim upgrade --dry-run) and reports whether the real run would
    change anything; nothing on the host changes.
options:
  service:
    description: The service id, as defined in shim's definitions (C(--id)).
    type: str
    required: true
    aliases: [id]
  revision:
    description:
      - The revision to deploy (fills C({revision}) in the image reference).
      - Omitted, the current revision with the definitions and secrets as they are now.
    type: str
  timeout:
    description:
      - Time for the new instances to become healthy (C(--timeout)), e.g. C(90s), C(2min);
        a bare number is seconds. Default, each process's C(health.start_period).
    type: str
  lock_timeout:
    description: How long to wait for another shim command on the same service (C(--lock-timeout)).
    type: str
  config:
    description: The definitions file (C(shim --config)); default shim's own (C(/etc/shim/services.toml)).
    type: path
  shim:
    description: The shim executable, a name looked up in C(PATH) or a path.
    type: str
    default: shim
notes:
  - Needs shim on the managed host; runs as the user Ansible becomes (shim needs root).
  - The exit codes and the C(--json) output it reads are shim's stable contract, see
    docs/fleet.md in the shim repository.
attributes:
  check_mode:
    support: full
    description: Runs C(shim upgrade --dry-run).
author:
  - shim contributors
"""

EXAMPLES = r"""
- name: Deploy the revision CI built
  shim.fleet.shim_upgrade:
    service: billing_app
    revision: 279d9035886d4c0427549863c4c2101e4a63e041
    timeout: 90s
  register: deployed

- name: Roll out a definition or secret change at the current revision
  shim.fleet.shim_upgrade:
    service: billing_app

- name: Would it change anything? (shim upgrade --dry-run)
  shim.fleet.shim_upgrade:
    service: billing_app
    revision: "{{ revision }}"
  check_mode: true
  register: plan
"""

RETURN = r"""
changed:
  description: Whether shim changed anything (false when the deployment already ran in full).
  returned: always
  type: bool
service:
  description: The service id.
  returned: always
  type: str
revision:
  description: The revision deployed.
  returned: success
  type: str
  sample: 279d9035886d4c0427549863c4c2101e4a63e041
deployment:
  description: The id of the deployment now running (revision, image digest, definition, secrets).
  returned: success
  type: str
  sample: aa50ebfae98c
revision_before:
  description: The revision the service's instances ran before (null if none ran, or several did).
  returned: always
  type: str
revision_after:
  description: The revision its instances run afterwards (also after a failure, what serves; in check mode, the revision they would run).
  returned: always
  type: str
deployment_before:
  description: The deployment id before.
  returned: always
  type: str
deployment_after:
  description: The deployment id afterwards.
  returned: always
  type: str
ms:
  description: Milliseconds the whole upgrade took, as shim measured it.
  returned: success
  type: int
dry_run:
  description: True in check mode (shim ran with C(--dry-run)).
  returned: success
  type: bool
would_change:
  description: In check mode, whether the real run would change anything (the same as
    C(changed), kept when a task overrides C(changed) with C(changed_when)).
  returned: success, in check mode
  type: bool
steps:
  description: shim's steps in order, each with its duration and details.
  returned: always
  type: list
  elements: dict
  contains:
    step:
      description: The step (fetch, lock, recover, plan, start, health, switch, drain, stop-old, record, probe, ...).
      type: str
    ok:
      description: Whether it succeeded.
      type: bool
    ms:
      description: Its duration in milliseconds.
      type: int
    details:
      description: What it did, one line each.
      type: list
      elements: str
    error:
      description: Why it failed.
      type: str
      returned: when the step failed
  sample:
    - {step: health, ok: true, ms: 12, details: ["shim-hello-web-v2-3c48bc34-1.service healthy after 6 ms (HTTP 200 on :20000/health)"]}
failed_step:
  description: The step that failed.
  returned: failure
  type: str
  sample: health
journal:
  description: The failed instances' last journal lines, by unit.
  returned: failure
  type: dict
bad_input:
  description: True when shim exited 2 (bad input such as an unknown revision or service; nothing was changed).
  returned: failure
  type: bool
rc:
  description: shim's exit code (0 success, 1 failed, 2 bad input).
  returned: always
  type: int
cmd:
  description: The command run.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.shim.fleet.plugins.module_utils.shim import converge


def main():
    module = AnsibleModule(
        argument_spec=dict(
            service=dict(type="str", required=True, aliases=["id"]),
            revision=dict(type="str"),
            timeout=dict(type="str"),
            lock_timeout=dict(type="str"),
            config=dict(type="path"),
            shim=dict(type="str", default="shim"),
        ),
        supports_check_mode=True,
    )
    converge(module, "upgrade", module.params["service"], module.params["revision"])


if __name__ == "__main__":
    main()
