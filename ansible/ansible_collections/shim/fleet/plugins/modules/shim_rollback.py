#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: shim contributors
# Apache License 2.0 (see LICENSE at the root of the shim repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: shim_rollback
short_description: Go back to a service's previous deployment with shim, on one host
version_added: "1.0.0"
description:
  - Runs C(shim rollback --id SERVICE --json) on the managed host, the same health-gated
    flow as M(shim.fleet.shim_upgrade) towards the previous deployment exactly as it ran
    (its image digest, definition and secrets snapshot).
  - A rollback flips between the current and the previous deployment, so running it twice
    goes forward again. With I(from_revision), hosts whose service does not run that
    revision are left alone (C(changed=false)), so re-running a half-done rollback is safe.
  - In check mode runs C(shim rollback --dry-run).
options:
  service:
    description: The service id (C(--id)).
    type: str
    required: true
    aliases: [id]
  from_revision:
    description: Roll back only if the service's instances run this revision now.
    type: str
  timeout:
    description: Time for the instances to become healthy (C(--timeout)); a bare number is seconds.
    type: str
  lock_timeout:
    description: How long to wait for another shim command on the same service.
    type: str
  config:
    description: The definitions file (C(shim --config)).
    type: path
  shim:
    description: The shim executable, a name looked up in C(PATH) or a path.
    type: str
    default: shim
attributes:
  check_mode:
    support: full
    description: Runs C(shim rollback --dry-run).
author:
  - shim contributors
"""

EXAMPLES = r"""
- name: Back to the previous deployment, only where the bad revision runs
  shim.fleet.shim_rollback:
    service: billing_app
    from_revision: 279d9035886d4c0427549863c4c2101e4a63e041
"""

RETURN = r"""
changed:
  description: Whether shim rolled back (false when I(from_revision) did not match).
  returned: always
  type: bool
revision:
  description: The revision now deployed (the previous one).
  returned: success
  type: str
deployment:
  description: The id of the deployment now running.
  returned: success
  type: str
revision_before:
  description: The revision the instances ran before.
  returned: always
  type: str
revision_after:
  description: The revision they run afterwards.
  returned: always
  type: str
steps:
  description: shim's steps with their durations and details, as M(shim.fleet.shim_upgrade) returns them.
  returned: always
  type: list
  elements: dict
failed_step:
  description: The step that failed.
  returned: failure
  type: str
journal:
  description: The failed instances' last journal lines, by unit.
  returned: failure
  type: dict
rc:
  description: shim's exit code (0 success, 1 failed, 2 bad input such as no previous revision).
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.shim.fleet.plugins.module_utils.shim import converge, current


def main():
    module = AnsibleModule(
        argument_spec=dict(
            service=dict(type="str", required=True, aliases=["id"]),
            from_revision=dict(type="str"),
            timeout=dict(type="str"),
            lock_timeout=dict(type="str"),
            config=dict(type="path"),
            shim=dict(type="str", default="shim"),
        ),
        supports_check_mode=True,
    )
    service = module.params["service"]
    want = module.params["from_revision"]
    if want:
        revision, deployment = current(module, service)
        if revision != want:
            module.exit_json(
                changed=False,
                service=service,
                steps=[],
                rc=0,
                revision=revision,
                deployment=deployment,
                revision_before=revision,
                revision_after=revision,
                msg="%s runs %s, not %s: nothing to roll back" % (service, revision, want),
            )
    converge(module, "rollback", service)


if __name__ == "__main__":
    main()
