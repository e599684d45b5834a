#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: shim contributors
# Apache License 2.0 (see LICENSE at the root of the shim repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: shim_status
short_description: shim's instances on one host, as facts
version_added: "1.0.0"
description:
  - Runs C(shim status --json) on the managed host and returns its instances as the fact
    C(shim_status), with a summary per service (the revision and deployment its instances run).
  - Changes nothing.
options:
  service:
    description: Only this service (C(--id)); default, all.
    type: str
    aliases: [id]
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
  facts:
    support: full
author:
  - shim contributors
"""

EXAMPLES = r"""
- name: What runs where
  shim.fleet.shim_status:
    service: billing_app

- name: Every instance runs the revision just deployed
  ansible.builtin.assert:
    that: ansible_facts.shim_status.services.billing_app.revision == revision
"""

RETURN = r"""
ansible_facts:
  description: Facts set.
  returned: always
  type: complex
  contains:
    shim_status:
      description: shim's instances on the host.
      type: complex
      contains:
        instances:
          description: C(shim status --json) as shim prints it, one dict per instance
            (service, process, instance, revision, deployment, unit, state, sub_state, port, ...).
          type: list
          elements: dict
        services:
          description: Per service, C(revision) and C(deployment) (null unless all its instances
            agree), C(revisions), C(deployments), C(instances) and C(active) counts.
          type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.shim.fleet.plugins.module_utils.shim import parse_error, status, summarize


def main():
    module = AnsibleModule(
        argument_spec=dict(
            service=dict(type="str", aliases=["id"]),
            config=dict(type="path"),
            shim=dict(type="str", default="shim"),
        ),
        supports_check_mode=True,
    )
    service = module.params["service"]
    rc, instances, err = status(module, service)
    if rc != 0:
        message, _ = parse_error(err)
        module.fail_json(msg=message or err, rc=rc, bad_input=(rc == 2))
    facts = dict(instances=instances, services=summarize(instances, service))
    module.exit_json(changed=False, ansible_facts=dict(shim_status=facts))


if __name__ == "__main__":
    main()
