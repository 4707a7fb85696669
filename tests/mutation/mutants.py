"""Hand-written mutants of the safety guards, each with the tests that must kill it.

Each entry removes or weakens one guard of the store, the locks or the reader. The
runner (``python -m tests.mutation.run``, ``make mutants``) applies one mutant at a
time to a copy of the repository and runs only that mutant's ``tests`` there: at
least one of them must fail. ``original`` must occur exactly once in ``file`` (the
exact text, indentation included); when the code around a guard changes, the runner
says so and the entry here must be updated with the new text.

Test ids are pytest node ids relative to the repository root; a parametrized test
named without brackets runs every case.
"""

from __future__ import annotations

from dataclasses import dataclass

STORE = "operator/etcdconfig/store/store.py"
MUTEX = "operator/etcdconfig/concurrency/mutex.py"
LOCKS = "operator/etcdconfig/concurrency/locks.py"
RECONCILER = "operator/etcdconfig/controller/reconciler.py"
READER = "operator/etcdconfig/reader.py"
SESSION = "operator/etcdconfig/concurrency/session.py"
MEMBERSHIP = "operator/etcdconfig/concurrency/membership.py"
HANDLERS = "operator/etcdconfig/controller/handlers.py"
MAIN = "operator/etcdconfig/controller/main.py"
NETWORK = "operator/etcdconfig/devenv/network.py"
LOOPS = "operator/etcdconfig/controller/loops.py"
HISTORY_API = "operator/etcdconfig/controller/history_api.py"
T_CREATE = "tests/e2e/test_create_latency.py"
T_FINALIZERS = "tests/e2e/test_adversarial_finalizers.py"

T_STORE = "tests/integration/test_store.py"
T_REVIEW = "tests/integration/test_review_findings.py"
T_FENCING = "tests/integration/test_fencing.py"
T_READER = "tests/integration/test_reader.py"
T_ADVERSARIAL = "tests/integration/test_adversarial.py"
T_KILLERS = "tests/integration/test_mutant_killers.py"
T_SHUTDOWN = "tests/integration/test_adversarial_shutdown.py"
T_HISTORY_API = "tests/e2e/test_history_api.py"
T_HISTORY_UNITS = "tests/unit/test_history_api_units.py"
T_ADV_HISTORY = "tests/e2e/test_adversarial_history_api.py"
T_STARTUP = "tests/e2e/test_startup.py"
T_ETCD_SECURITY = "tests/integration/test_etcd_security.py"
RECONCILE = "operator/etcdconfig/reconcile.py"
GITOPS = "operator/etcdconfig/gitops.py"
CLI_MAIN = "operator/etcdconfig/cli/main.py"
VERSIONED = "operator/etcdconfig/controller/versioned.py"
T_INTEGRITY_STATUS = "tests/integration/test_adversarial_integrity_status.py"
T_RECONCILE = "tests/unit/test_reconcile.py"
T_ADV_GITOPS = "tests/e2e/test_adversarial_gitops.py"
T_GITOPS_UNITS = "tests/unit/test_gitops.py"
T_VERSIONED = "tests/e2e/test_versioned_configmaps.py"

# lines of the commit's and the deletion's compares (indented where used)
FENCE = "*self.fencing_compares(mutex),\n"
HEAD_CMP = 'Compare.mod_revision(head_key, "=", head_kv.mod_revision if head_kv else 0),\n'
VERSION_CMP = 'Compare.create_revision(version_key, "=", 0),\n'
INC_CMP = 'Compare.mod_revision(inc_key, "=", inc_kv.mod_revision if inc_kv else 0),\n'
# _classify_failure's first question: did an earlier attempt land?
LANDED_AFTER_FAILURE = (
    "ours = await self._landed(ns, name, now, sent[:-1]) if now is not None else None\n"
)


def indent(n: int, *lines: str) -> str:
    return "".join(" " * n + line for line in lines)


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # relative to the repository root
    guard: str  # what the mutant breaks, in one line
    original: str  # exact text, found exactly once in ``file``
    replacement: str
    tests: tuple[str, ...]  # node ids; at least one must fail
    timeout: float = 120.0  # seconds for the whole pytest run; a hang counts as killed
    todo: str = ""  # set: a placeholder that is listed but not run


MUTANTS: tuple[Mutant, ...] = (
    # --- the commit transaction's compares (store._commit_once) -------------------------------
    Mutant(
        id="M01",
        file=STORE,
        guard="commit: fencing compare (writer still holds the lock)",
        original="        compares = [\n" + indent(12, FENCE, HEAD_CMP),
        replacement="        compares = [\n" + indent(12, HEAD_CMP),
        tests=(f"{T_FENCING}::test_paused_holder_commit_is_rejected_and_writes_nothing",),
    ),
    Mutant(
        id="M02",
        file=STORE,
        guard="commit: mod_revision(head) compare (nothing moved since the read)",
        original=indent(12, FENCE, HEAD_CMP, VERSION_CMP),
        replacement=indent(12, FENCE, VERSION_CMP),
        tests=(f"{T_KILLERS}::test_commit_refused_when_the_head_moved_after_it_was_read",),
    ),
    Mutant(
        id="M03",
        file=STORE,
        guard="commit: create_revision(versions/N+1) == 0 (never overwrite a version)",
        original=indent(12, VERSION_CMP),
        replacement="",
        tests=(
            f"{T_STORE}::test_verify_reports_garbage_and_unknown_formats_without_crashing",
            "tests/integration/test_bad_input.py"
            "::test_garbage_version_beyond_the_head_blocks_commits_without_being_overwritten",
        ),
    ),
    Mutant(
        id="M04",
        file=STORE,
        guard="commit: mod_revision(incarnation) compare (uid not deleted since the read)",
        original=indent(
            12, "# the uid's incarnation record is as read: above all, not deleted since\n", INC_CMP
        ),
        replacement="",
        tests=(f"{T_KILLERS}::test_commit_refused_when_its_uid_was_deleted_after_the_read",),
    ),
    # --- outcome classification ---------------------------------------------------------------
    Mutant(
        id="M05a",
        file=STORE,
        guard="_landed: head's recordChecksum must be this attempt's (replaced by True)",
        original="            if head.record_checksum == rc:\n                return ours\n",
        replacement="            if True:\n                return ours\n",
        tests=(
            f"{T_REVIEW}::test_same_generation_written_by_another_holder_is_not_claimed_as_ours",
        ),
    ),
    Mutant(
        id="M05b",
        file=STORE,
        guard="_landed: the stored version's bytes must be this attempt's record "
        "(any record under the number counts, e.g. the same (uid, generation))",
        original="                if sha256_of(kv.value) == rc:\n",
        replacement="                if kv.value:\n",
        tests=(
            f"{T_REVIEW}::test_same_generation_written_by_another_holder_is_not_claimed_as_ours",
        ),
    ),
    Mutant(
        id="M05c",
        file=STORE,
        guard="_landed: a pruned attempt counts only if its successor's parentChecksum names it",
        original="                    if VersionRecord.parse(nxt.value).parent_checksum == rc:\n",
        replacement="                    if VersionRecord.parse(nxt.value).parent_checksum:\n",
        tests=(f"{T_KILLERS}::test_a_pruned_version_of_another_holder_is_not_claimed_as_ours",),
    ),
    Mutant(
        id="M06",
        file=STORE,
        guard="_classify_failure: landed/already-recorded checked before the lock "
        "(else LockLost for a version that was written)",
        original=indent(8, LANDED_AFTER_FAILURE),
        replacement=(
            "        _lk = lock_res.kvs if lock_res else ()\n"
            "        if not _lk or _lk[0].create_revision != mutex.revision:\n"
            '            self.stats["lost_locks"] += 1\n'
            "            mutex.released_by_commit()\n"
            '            raise LockLost(f"{ns}/{name}: the lock was lost before the commit")\n'
            + indent(8, LANDED_AFTER_FAILURE)
        ),
        tests=(
            f"{T_REVIEW}::test_an_attempt_that_lands_late_is_reported_recorded_not_lock_lost",
            f"{T_REVIEW}::test_same_generation_written_by_another_holder_is_not_claimed_as_ours",
        ),
    ),
    # --- stale incarnations -------------------------------------------------------------------
    Mutant(
        id="M07",
        file=STORE,
        guard="commit: a uid whose incarnation record says deleted never writes again",
        original="        if (inc is not None and inc.deleted) or (\n",
        replacement="        if False or (\n",
        tests=(
            f"{T_REVIEW}::test_stale_copy_of_a_deleted_uid_is_refused_after_a_foreign_tombstone",
        ),
    ),
    Mutant(
        id="M08",
        file=STORE,
        guard="commit: the head's own tombstone for this uid refuses it "
        "(a tombstone without an incarnation record)",
        original="            head is not None and head.uid == uid and head.deleted\n",
        replacement="            False\n",
        tests=(f"{T_KILLERS}::test_a_tombstone_without_an_incarnation_record_refuses_its_uid",),
    ),
    Mutant(
        id="M09a",
        file=STORE,
        guard="commit: a uid the head does not name needs owner_confirmed (OwnerUnconfirmed)",
        original="        if (head is None or head.uid != uid) and not change.owner_confirmed:\n",
        replacement="        if False:\n",
        tests=(
            f"{T_STORE}::test_other_incarnation_is_refused_until_the_owner_is_confirmed",
            f"{T_REVIEW}::test_a_uid_the_store_never_saw_needs_the_api_servers_word",
        ),
    ),
    Mutant(
        id="M09b",
        file=RECONCILER,
        guard="reconciler._record: the API server's uid must be the change's uid to confirm",
        original=indent(20, 'if current is None or current["metadata"]["uid"] != change.uid:\n'),
        replacement="                    if current is None:\n",
        tests=(
            f"{T_ADVERSARIAL}"
            "::test_stale_bodies_after_delete_and_recreate_write_nothing_through_the_reconciler",
        ),
    ),
    Mutant(
        id="M10",
        file=STORE,
        guard="purge scope: _own_versions stops at another uid's record",
        original="                if rec.uid != uid:\n                    return out\n",
        replacement="",
        tests=(
            f"{T_KILLERS}::test_purge_without_an_incarnation_record_keeps_the_earlier_uids_history",
        ),
    ),
    # --- lock keys never outlive their use (mutex.py, locks.py) --------------------------------
    Mutant(
        id="M11",
        file=MUTEX,
        guard="_abandon deletes our key also when the acquire's outcome (its revision) is unknown",
        original="        if self.key_may_exist:\n",
        replacement="        if self.key_may_exist and rev:\n",
        tests=(f"{T_REVIEW}::test_acquire_that_lands_with_a_lost_reply_leaves_no_key",),
    ),
    Mutant(
        id="M12",
        file=MUTEX,
        guard="release retries transient errors (RELEASE_ATTEMPTS > 1)",
        original="RELEASE_ATTEMPTS = 4 ",
        replacement="RELEASE_ATTEMPTS = 1 ",
        tests=(f"{T_REVIEW}::test_release_that_meets_a_transient_error_is_retried",),
    ),
    Mutant(
        id="M13a",
        file=LOCKS,
        guard="sweep deletes orphaned keys (its delete removed)",
        original="                        [DeleteRange(kv.key)],\n",
        replacement="                        [],\n",
        tests=(f"{T_REVIEW}::test_acquire_abandoned_in_flight_is_swept",),
    ),
    Mutant(
        id="M13b",
        file=LOCKS,
        guard="sweep leaves keys in use alone (in-use guard)",
        original=(
            "            if (ns, name) in self._local:\n"
            "                continue  # in use: its own release path deletes it\n"
        ),
        replacement="",
        tests=(f"{T_REVIEW}::test_sweep_leaves_keys_in_use_alone",),
        timeout=20.0,  # the mutant deadlocks on the held in-process lock: a hang kills it
    ),
    Mutant(
        id="M13c",
        file=LOCKS,
        guard="sweep deletes only this session's keys (own-lease check)",
        original="            if not kv.key.endswith(suffix):\n                continue\n",
        replacement="",
        tests=(f"{T_KILLERS}::test_sweep_leaves_other_sessions_keys_alone",),
    ),
    Mutant(
        id="M14",
        file=MUTEX,
        guard="_wait_delete: a predecessor key re-created (new create revision) is not waited for",
        original="            if kv is None or kv.create_revision != create_revision:\n",
        replacement="            if kv is None:\n",
        tests=(
            f"{T_REVIEW}"
            "::test_waiter_is_not_stuck_behind_a_predecessor_key_recreated_after_compaction",
        ),
    ),
    # --- verify -------------------------------------------------------------------------------
    Mutant(
        id="M15",
        file=STORE,
        guard="verify: head generation == newest record's generation",
        original="            if head.generation != newest.generation:\n",
        replacement="            if False:\n",
        tests=(f"{T_REVIEW}::test_verify_reports_a_head_that_disagrees_with_the_newest_record",),
    ),
    Mutant(
        id="M16",
        file=STORE,
        guard="verify: head uid == newest record's uid",
        original="            if head.uid != newest.uid:\n",
        replacement="            if False:\n",
        tests=(f"{T_REVIEW}::test_verify_reports_a_head_that_disagrees_with_the_newest_record",),
    ),
    Mutant(
        id="M17a",
        file=STORE,
        guard="verify: versions stored without a head (missing-head)",
        original="            if records and head_kv is None:\n",
        replacement="            if False:\n",
        tests=(f"{T_REVIEW}::test_verify_reports_versions_without_a_head",),
    ),
    Mutant(
        id="M17b",
        file=STORE,
        guard="verify: a version written after its uid's deletion (written-after-deletion)",
        original=(
            "            if ended is not None and ended.deleted and "
            "rec.mod_revision > ended.mod_revision:\n"
        ),
        replacement="            if False:\n",
        tests=(f"{T_KILLERS}::test_verify_reports_a_version_written_after_its_uids_deletion",),
    ),
    # --- the reader ---------------------------------------------------------------------------
    # reader.py no longer has the per-head incarnation check (_check_incarnation): its
    # cache is keyed by (namespace, name, version, record checksum), so a version number
    # reused by a later incarnation after a Purge never serves the purged record. The
    # mutant keys the cache by (namespace, name, version) again: the bug the check fixed.
    Mutant(
        id="M18",
        file=READER,
        guard="reader: cached record must be the exact record (checksum in the cache key), "
        "not any record once stored under the version number",
        original=(
            "        record = self._cache.get(key)\n"
            "        if record is not None:\n"
            "            self._cache.move_to_end(key)\n"
        ),
        replacement=(
            "        record = next((r for k, r in self._cache.items() if k[:3] == key[:3]), None)\n"
            "        if record is not None:\n"
        ),
        tests=(
            f"{T_READER}"
            "::test_the_cache_never_serves_a_purged_incarnations_version_under_a_reused_number",
            f"{T_READER}::test_watch_and_cache_follow_a_purge_and_recreate",
            f"{T_READER}"
            "::test_a_version_changed_in_etcd_after_it_was_cached_is_not_served_from_the_cache",
        ),
    ),
    # --- deletion -----------------------------------------------------------------------------
    Mutant(
        id="M19",
        file=STORE,
        guard="delete: fencing compare on the tombstone transaction",
        original=indent(16, FENCE, HEAD_CMP, INC_CMP),
        replacement=indent(16, HEAD_CMP, INC_CMP),
        tests=(f"{T_ADVERSARIAL}::test_a_finalize_whose_lease_expired_writes_no_tombstone",),
    ),
    Mutant(
        id="M20",
        file=STORE,
        guard="delete: mod_revision(head) compare on the tombstone transaction",
        original=indent(16, FENCE, HEAD_CMP, INC_CMP),
        replacement=indent(16, FENCE, INC_CMP),
        tests=(f"{T_KILLERS}::test_deletion_refused_when_the_head_moved_after_it_was_read",),
    ),
    Mutant(
        id="M21",
        file=STORE,
        guard="delete: mod_revision(incarnation) compare on the tombstone transaction",
        original=indent(16, FENCE, HEAD_CMP, INC_CMP),
        replacement=indent(16, FENCE, HEAD_CMP),
        tests=(
            f"{T_KILLERS}"
            "::test_deletion_refused_when_its_incarnation_record_changed_after_the_read",
        ),
    ),
    Mutant(
        id="M22",
        file=STORE,
        guard="supersede: compare on the superseded uid's incarnation record",
        original='            Compare.mod_revision(key, "=", kv.mod_revision if kv else 0),\n',
        replacement='            Compare.mod_revision(key, "<", 2**62),  # always true\n',
        tests=(
            f"{T_KILLERS}::test_supersede_refused_when_the_old_uids_record_changed_after_the_read",
        ),
    ),
    # --- shutdown: leave at once, and nothing of the departing replica comes back ------------
    Mutant(
        id="M23",
        file=SESSION,
        guard="Session.close: a cancellation of its caller propagates (else a stopping "
        "keeper re-joins on a fresh lease after leave)",
        original="                await asyncio.wait({self._task})\n",
        replacement=(
            "                with contextlib.suppress(asyncio.CancelledError):\n"
            "                    await self._task\n"
        ),
        tests=(f"{T_SHUTDOWN}::test_defect_keeper_swallows_the_stop_and_rejoins_after_leave",),
    ),
    Mutant(
        id="M24",
        file=HANDLERS,
        guard="reconcile: a replica that is stopping writes no retry status (the new owner's "
        "stands)",
        original=(
            "            if not runtime.stopping:  # once it left, the new owner's status stands\n"
            "                _apply(patch, obj, exc.status)\n"
        ),
        replacement="            _apply(patch, obj, exc.status)\n",
        tests=(
            f"{T_SHUTDOWN}::test_defect_late_status_of_the_departed_replica_overwrites_the_new_owners",
        ),
    ),
    Mutant(
        id="M25",
        file=MAIN,
        guard="run: the leave task exists before kopf starts (kopf cancels later tasks, so a "
        "slow leave would end in CancelledError)",
        original='    leaving = loop.create_task(leave(), name="leave")\n',
        replacement=(  # created only when awaited, in the finally: after kopf has stopped
            "    class _Lazy:\n"
            "        task = None\n"
            "\n"
            "        def __await__(self):\n"
            "            if _Lazy.task is None:\n"
            '                _Lazy.task = loop.create_task(leave(), name="leave")\n'
            "            return _Lazy.task.__await__()\n"
            "\n"
            "    leaving = _Lazy()\n"
        ),
        tests=(
            f"{T_SHUTDOWN}::test_defect_kopf_cancels_the_leave_task_when_etcd_is_slow",
            f"{T_SHUTDOWN}::test_sigterm_leaves_at_once_while_a_handler_holds_a_lock_and_it_writes_nothing",
        ),
    ),
    # --- the node: dev down leaves the host as dev up found it ---------------------------------
    Mutant(
        id="M26",
        file=NETWORK,
        guard="undo: iptables rules and chains that were not there before up are removed",
        original=(
            '        if "iptables_before" in self.data:  # the kubelet\'s own chains, and '
            "anything else new\n"
            '            problems += _restore_iptables(self.data["iptables_before"])\n'
        ),
        replacement="",
        tests=("tests/node/test_host.py::test_down_leaves_the_host_as_up_found_it[clean]",),
        timeout=600.0,
    ),
    # --- finalizers: only the owner adds ours ------------------------------------------------
    Mutant(
        id="M27",
        file=HANDLERS,
        guard="finalize handler filtered: a non-owner never adds our finalizer (else the "
        "owner's kopf can stall on a creation until the next resync)",
        original=(
            '    @kopf.on.delete(*RESOURCE, registry=registry, id="finalize", when=finalized)\n'
        ),
        replacement='    @kopf.on.delete(*RESOURCE, registry=registry, id="finalize")\n',
        tests=(f"{T_CREATE}::test_every_new_config_is_recorded_on_its_creation_event",),
        timeout=300.0,
    ),
    Mutant(
        id="M28",
        file=HANDLERS,
        guard="every replica puts the finalizer back on a Config with a recorded version "
        "(else a replace while the owner is away drops it and the deletion goes unrecorded)",
        original='            or body.status.get("version") is not None\n',
        replacement="",
        tests=(
            f"{T_FINALIZERS}"
            "::test_a_recorded_config_replaced_while_its_owner_is_frozen_keeps_its_finalizer",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M29",
        file=LOOPS,
        guard="resync reconciles an invalid Config as it is (the webhook refuses the "
        "finalizer patch, so it would never be reported)",
        original="        if FINALIZER in finalizers or not self._recordable(obj):\n",
        replacement="        if FINALIZER in finalizers:\n",
        tests=(
            f"{T_FINALIZERS}::test_an_invalid_config_the_webhook_keeps_unfinalized_is_still_reported",
        ),
        timeout=300.0,
    ),
    # --- the history API (docs/history-api.md) and the start-up wait for etcd -------------
    Mutant(
        id="M30",
        file=HISTORY_API,
        guard="the history API accepts a request without a front-proxy client certificate",
        original="        if not peercert:\n",
        replacement="        if not peercert and False:\n",
        tests=(f"{T_HISTORY_API}::test_a_request_not_from_the_api_server_is_refused",),
        timeout=300.0,
    ),
    Mutant(
        id="M31",
        file=HISTORY_API,
        guard="the history API accepts any certificate of the front proxy's CA, whatever "
        "its common name (requestheader-allowed-names ignored)",
        original="        if self.allowed_names and not any(cn in self.allowed_names for cn in "
        "common_names):\n",
        replacement="        if False:\n",
        tests=(
            f"{T_HISTORY_UNITS}::test_authentication_needs_the_front_proxy_certificate_and_a_user",
            f"{T_HISTORY_API}::test_a_request_not_from_the_api_server_is_refused",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M32",
        file=HISTORY_API,
        guard="a SubjectAccessReview that says no is not enforced",
        original="        if not allowed:\n            raise access.forbidden(user, reason)\n",
        replacement="        pass\n",
        # kube-apiserver authorizes before it proxies: only a request straight to the
        # server, with the front proxy's certificate, shows the server's own check
        tests=(f"{T_HISTORY_API}::test_the_server_authorizes_by_itself_what_the_proxy_passes",),
        timeout=300.0,
    ),
    Mutant(
        id="M33",
        file=HISTORY_API,
        guard="the SubjectAccessReview cache answers for a user whatever its groups",
        original="        key = (user, access)\n",
        replacement="        key = (User(user.name), access)\n",
        tests=(f"{T_HISTORY_UNITS}::test_answers_are_cached_for_the_ttl_and_keyed_by_everything",),
    ),
    Mutant(
        id="M34",
        file=HISTORY_API,
        guard="a record is not held to its successor's parentChecksum (data and checksum "
        "rewritten together are served)",
        original="        if record_checksum is None and successor is not None and "
        "successor.version == version + 1:\n",
        replacement="        if False:\n",
        tests=(f"{T_HISTORY_API}::test_a_tampered_record_is_refused_with_the_verify_hint",),
        timeout=300.0,
    ),
    Mutant(
        id="M35",
        file=HISTORY_API,
        guard="the head's version is not held to the head's recordChecksum",
        original="        if head is not None and head.version == version:\n"
        "            return head.record_checksum, head.checksum\n",
        replacement="        if False:\n            return None, None\n",
        tests=(f"{T_HISTORY_API}::test_a_tampered_record_is_refused_with_the_verify_hint",),
        timeout=300.0,
    ),
    Mutant(
        id="M36",
        file=MAIN,
        guard="a TLS error at start-up is waited out like an etcd that does not answer",
        original="        except EtcdTLSError as exc:\n"
        '            raise StartupError(f"etcd: {exc}") from exc\n',
        replacement="",
        tests=(
            f"{T_ETCD_SECURITY}::test_operator_start_up_exits_2_with_one_line_naming_the_cause"
            "[wrong-ca]",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M37",
        file=MAIN,
        guard="the start-up wait for etcd never gives up",
        original="            if left <= 0:\n",
        replacement="            if False:\n",
        tests=(f"{T_STARTUP}::test_an_etcd_that_never_answers_stops_start_up_after_the_wait",),
        timeout=300.0,
    ),
    Mutant(
        id="M38",
        file=MAIN,
        guard="no signal handler from the first start-up step (PID 1 ignores SIGTERM: the "
        "pod waits out its grace period)",
        original="    take_signals()\n    client = EtcdClient(settings.etcd())\n",
        replacement="    client = EtcdClient(settings.etcd())\n",
        tests=(f"{T_STARTUP}::test_a_sigterm_while_waiting_for_etcd_stops_at_once_and_cleanly",),
        timeout=300.0,
    ),
    Mutant(
        id="M39",
        file=MAIN,
        guard="a signal during the Kubernetes checks of the start-up is not looked at",
        original="    if stop.is_set():\n"
        '        log.info("stopping: a signal arrived during start-up")\n',
        replacement="    if False:\n"
        '        log.info("stopping: a signal arrived during start-up")\n',
        tests=(
            f"{T_ADV_HISTORY}::test_a_sigterm_after_etcd_answered_but_before_kopf_stops_cleanly",
            f"{T_ADV_HISTORY}::test_a_sigterm_during_a_successful_etcd_connect_stops_the_start_up",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M40",
        file=HISTORY_API,
        guard="a continue token may name another namespace than the one authorized",
        original="    if namespace and ns != namespace:\n",
        replacement="    if False:\n",
        tests=(
            f"{T_ADV_HISTORY}::test_a_forged_continue_token_cannot_list_versions_of_another_namespace",
            f"{T_ADV_HISTORY}::test_a_forged_continue_token_cannot_list_histories_of_another_namespace",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M41",
        file=HISTORY_API,
        guard="a version key above the head (no commit wrote it) is served",
        original="        if version > newest:\n",
        replacement="        if False:\n",
        tests=(f"{T_ADV_HISTORY}::test_a_version_key_above_the_head_is_refused",),
        timeout=300.0,
    ),
    Mutant(
        id="M42",
        file=RECONCILE,
        guard="an integrity violation found by the scan does not stall the Config",
        original='        b.set("Stalled", True, "IntegrityViolation", INTEGRITY_STALLED)\n    else:\n',
        replacement='        b.set("Stalled", False, "IntegrityViolation", INTEGRITY_STALLED)\n    else:\n',
        tests=(
            f"{T_RECONCILE}::test_an_integrity_violation_found_by_the_scan_stalls_until_verified_again",
        ),
    ),
    Mutant(
        id="M43",
        file=RECONCILE,
        guard="a later reconcile's status un-stalls a violation that still stands",
        original="""    b.set("Stalled", True, "IntegrityViolation", INTEGRITY_STALLED)\n\n\ndef status_rollout_failed(""",
        replacement="""    b.set("Stalled", False, "IntegrityViolation", INTEGRITY_STALLED)\n\n\ndef status_rollout_failed(""",
        tests=(
            f"{T_INTEGRITY_STATUS}::test_defect_next_resync_reconcile_clears_stalled_while_the_violation_stands",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M44",
        file=RECONCILE,
        guard="a status built from a body read before the scan erases its verdict",
        original="    if intact is None:\n        return previous\n",
        replacement="    if True:\n        return previous\n",
        tests=(
            f"{T_INTEGRITY_STATUS}::test_defect_kopf_status_computed_before_the_scan_erases_the_violation",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M45",
        file=LOOPS,
        guard="a clean verdict computed before a newer status is patched over it",
        original='                ns, name, status, resource_version=fmeta.get("resourceVersion")\n',
        replacement="                ns, name, status, resource_version=None\n",
        tests=(
            f"{T_INTEGRITY_STATUS}::test_defect_stale_clean_scan_clears_a_violation_reported_after_it",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M46",
        file=RECONCILE,
        guard="a stale rollback annotation makes a change that keeps the data a rollback",
        original="    if raw and data_checksum != head_checksum:\n",
        replacement="    if raw:\n",
        tests=(f"{T_RECONCILE}::test_rollback_origin_only_for_exactly_the_rolled_back_data",),
    ),
    Mutant(
        id="M47",
        file=GITOPS,
        guard="the recommended instance label alone is taken for Argo CD",
        original="    if isinstance(instance, str) and argo and HELM_RELEASE not in annotations:\n",
        replacement="    if isinstance(instance, str) and HELM_RELEASE not in annotations:\n",
        tests=(
            f"{T_GITOPS_UNITS}::test_argo_label_tracking_needs_argo_cds_field_manager_beside_the_label",
        ),
    ),
    Mutant(
        id="M48",
        file=CLI_MAIN,
        guard="a rollback whose Config changed since it was read is retried over the change",
        original='        if (fmeta.get("generation"), fmeta.get("labels"), fmeta.get("annotations")) != seen:\n',
        replacement="        if False:\n",
        tests=(
            f"{T_ADV_GITOPS}::test_defect_rollback_failing_on_a_concurrent_change_does_not_say_so",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M49",
        file=CLI_MAIN,
        guard="a rollback to the data the Config holds patches the annotations alone",
        original="            same = _holds_data(obj, target.data)\n",
        replacement="            same = False\n",
        tests=(
            f"{T_ADV_GITOPS}::test_defect_rollback_to_the_current_data_claims_a_new_version_and_leaves_a_stale_mark",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M50",
        file=VERSIONED,
        guard="a versioned ConfigMap something still refers to is deleted",
        original='        if cm_meta["name"] in referenced or _pinned_lately(cm_meta, now):\n',
        replacement="        if _pinned_lately(cm_meta, now):\n",
        tests=(f"{T_VERSIONED}::test_a_versioned_configmap_stays_while_anything_refers_to_it",),
        timeout=300.0,
    ),
    Mutant(
        id="M51",
        file=VERSIONED,
        guard="the newest `keep` versioned ConfigMaps are not kept",
        original="    candidates = [(v, cm) for v, cm in ours[target.keep :] if v != head.version]\n",
        replacement="    candidates = [(v, cm) for v, cm in ours if v != head.version]\n",
        tests=(
            f"{T_VERSIONED}::test_each_version_is_an_immutable_configmap_and_unreferenced_old_ones_go",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M52",
        file="operator/etcdconfig/controller/pinning.py",
        guard="a pod is pinned to a look-alike ConfigMap the Config did not publish",
        original='        if publish._ownership(cm_meta, obj["metadata"], "") is not None:\n',
        replacement="        if False:\n",
        tests=(
            "tests/unit/test_adversarial_versioned_units.py::test_a_faithful_copy_owned_by_another_config_is_not_pinned_to",
        ),
    ),
    Mutant(
        id="M53",
        file="operator/etcdconfig/controller/pinning.py",
        guard="a pin to a version the store does not hold rewrites the pod anyway",
        original="        if not isinstance(target, tuple):\n            metrics.POD_PINS",
        replacement="        if False:\n            metrics.POD_PINS",
        tests=(
            "tests/e2e/test_pinning.py::test_pods_without_the_label_or_a_valid_pin_start_unchanged",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M54",
        file="operator/etcdconfig/controller/pinning.py",
        guard="a pod is pinned to a ConfigMap that does not hold the version it names",
        original="        if not _holds(cm, version, record.checksum, content):\n",
        replacement="        if False:\n",
        tests=(
            "tests/unit/test_adversarial_versioned_units.py::test_the_webhook_never_pins_to_a_configmap_that_does_not_hold_the_version",
        ),
    ),
    Mutant(
        id="M55",
        file="operator/etcdconfig/controller/versioned.py",
        guard="a collection whose delete lost its precondition counts the Config as clean",
        original='            failed.append(cm_meta["name"])  # changed meanwhile (pinned?): judged next time\n',
        replacement="            pass\n",
        tests=(
            "tests/unit/test_adversarial_versioned_units.py::test_a_deletion_that_lost_its_precondition_is_tried_again",
        ),
    ),
    Mutant(
        id="M56",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a resync rolls a version that was rolled back forward again",
        original='        failed = record is not None and record[0].get("state") in FAILED\n',
        replacement="        failed = False\n",
        tests=(
            "tests/e2e/test_rollouts.py::test_a_crashing_pod_of_the_version_rolls_back_to_the_last_healthy_one",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M57",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a crash-looping pod of the new version is not seen as a failure",
        original='        if waiting.get("reason") in _STUCK:\n',
        replacement="        if False:\n",
        tests=(
            "tests/unit/test_rollout_units.py::test_a_pod_failure_names_the_container_and_the_reason",
        ),
    ),
    Mutant(
        id="M58",
        file=RECONCILE,
        guard="a failed rollout stalls the status of a newer version",
        original='    if failure is None or status.get("version") != failure[0]:\n',
        replacement="    if failure is None:\n",
        tests=(
            "tests/unit/test_rollout_units.py::test_a_failed_rollout_stalls_the_status_of_its_version_only",
        ),
    ),
    Mutant(
        id="M59",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a progress deadline of an older template fails the new version",
        original='            if (st.get("observedGeneration") or 0) >= (w["metadata"].get("generation") or 0):\n',
        replacement="            if True:\n",
        tests=(
            "tests/e2e/test_adversarial_rollouts.py::test_a_progress_deadline_of_an_older_generation_does_not_fail_the_new_version",
        ),
        timeout=300.0,
    ),
    Mutant(
        id="M60",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a rollback pulls back workloads already pinned to a newer head",
        original="                if _template_pin(w, name, uid) == version:\n",
        replacement="                if True:\n",
        tests=(
            "tests/unit/test_adversarial_rollouts_units.py::test_a_rollback_decided_for_an_old_head_does_not_undo_the_new_heads_rollout",
        ),
    ),
    Mutant(
        id="M61",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a pin of an earlier incarnation counts as a pin of this one",
        original="    if uid is not None and marker is not None and marker != uid:\n",
        replacement="    if False:\n",
        tests=(
            "tests/unit/test_rollout_units.py::test_a_pin_of_an_earlier_incarnation_is_no_pin_of_this_one",
        ),
    ),
    Mutant(
        id="M62",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a replica that no longer owns the Config keeps watching its rollout",
        original="        return membership is None or bool(membership.owns(uid))\n",
        replacement="        return True\n",
        tests=(
            "tests/unit/test_adversarial_rollouts_units.py::test_a_replica_that_no_longer_owns_the_config_stops_watching_and_writing",
        ),
    ),
    Mutant(
        id="M63",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a rollout's outcome is written over another replica's",
        original='                [Compare.mod_revision(key, "=", revision), *also],\n',
        replacement="                [*also],\n",
        tests=(
            "tests/unit/test_adversarial_rollouts_units.py::test_one_record_per_version_and_one_outcome_per_record",
        ),
    ),
    Mutant(
        id="M64",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a second rollout record is started for one version",
        original='                Compare.create_revision(key, "=", 0),\n',
        replacement="",
        tests=(
            "tests/unit/test_adversarial_rollouts_units.py::test_one_record_per_version_and_one_outcome_per_record",
        ),
    ),
    Mutant(
        id="M65",
        file="operator/etcdconfig/controller/versioned.py",
        guard="a ConfigMap a pod was pinned to a moment ago is collected",
        original='        if cm_meta["name"] in referenced or _pinned_lately(cm_meta, now):\n',
        replacement='        if cm_meta["name"] in referenced:\n',
        tests=(
            "tests/unit/test_adversarial_versioned_units.py::test_a_configmap_pinned_to_lately_is_not_collected",
        ),
    ),
    Mutant(
        id="M66",
        file="operator/etcdconfig/store/store.py",
        guard="the commit that prunes versions leaves their rollout records behind",
        original="            # and the outcomes of rolling them out: nothing can roll back to them now\n"
        "            success.append(\n",
        replacement="            # and the outcomes of rolling them out: nothing can roll back to them now\n"
        "            (lambda op: None)(\n",
        tests=(
            "tests/integration/test_rollout_records.py::test_retention_removes_the_rollout_records_of_the_versions_it_prunes",
        ),
    ),
    Mutant(
        id="M67",
        file="operator/etcdconfig/store/store.py",
        guard="a Purge leaves the incarnation's rollout records behind",
        original="        if purged:  # the outcomes of this uid's rollouts go with its versions\n",
        replacement="        if False:  # the outcomes of this uid's rollouts go with its versions\n",
        tests=(
            "tests/integration/test_rollout_records.py::test_purge_removes_the_uids_rollout_records_and_retain_keeps_them",
        ),
    ),
    Mutant(
        id="M68",
        file="operator/etcdconfig/controller/versioned.py",
        guard="an earlier plain ConfigMap of the versioned name is taken over",
        original='            if VERSION_LABEL not in (cm_meta.get("labels") or {}):\n',
        replacement="            if False:\n",
        tests=(
            "tests/unit/test_adversarial_versioned_units.py::test_a_plain_configmap_of_the_versioned_name_is_refused_and_left_untouched",
        ),
    ),
    Mutant(
        id="M69",
        file="operator/etcdconfig/controller/pinning.py",
        guard="the webhook pins to a ConfigMap without touching it (a collection in flight deletes it)",
        original="        touched = await rt.kube.patch_config_map(\n",
        replacement="        touched = True or await rt.kube.patch_config_map(\n",
        tests=(
            "tests/unit/test_adversarial_versioned_units.py::test_a_pod_admitted_during_a_collection_keeps_the_version_it_was_pinned_to",
        ),
    ),
    Mutant(
        id="M70",
        file="operator/etcdconfig/controller/loops.py",
        guard="an integrity violation whose status patch lost the race (409) is dropped",
        original="        for attempt in range(3):\n",
        replacement="        for attempt in range(1):\n",
        tests=(
            "tests/integration/test_adversarial_integrity_status.py::test_a_violation_whose_patch_lost_the_race_is_written_again",
        ),
    ),
    Mutant(
        id="M71",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a rollout record is created after the head moved (a Purge leaves it behind)",
        original='                Compare.mod_revision(rt.store.keys.head(ns, name), "=", head.mod_revision),\n',
        replacement="",
        tests=(
            "tests/integration/test_adversarial_rollout_records.py::test_review_a_purge_during_a_roll_leaves_a_record_nothing_ever_deletes",
        ),
    ),
    Mutant(
        id="M72",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a rollout record that is not a JSON object breaks the reconcile",
        original="        if not isinstance(record, dict):\n            return None  # not a rollout record: as if there were none\n",
        replacement="",
        tests=(
            "tests/integration/test_adversarial_rollout_records.py::test_review_a_head_record_that_is_not_an_object_breaks_the_reconcile",
        ),
    ),
    Mutant(
        id="M73",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="an outcome under way is cached: a hand-over and back reports a rolled-back head Ready",
        original='            if found is not None and found[0].get("state") != "Started":\n',
        replacement="            if True:\n",
        tests=(
            "tests/integration/test_adversarial_rollout_records.py::test_review_a_hand_over_leaves_the_new_owner_reporting_a_rolled_back_head_ready",
        ),
    ),
    Mutant(
        id="M74",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a rollback is recorded to a version pruned meanwhile",
        original='                [Compare.mod_revision(key, "=", revision), *also],\n',
        replacement='                [Compare.mod_revision(key, "=", revision)],\n',
        tests=(
            "tests/integration/test_adversarial_rollout_records.py::test_review_a_rollback_is_recorded_to_a_version_pruned_meanwhile",
        ),
    ),
    Mutant(
        id="M75",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="the failure of a version pruned while watched is dropped silently",
        original="        if outcome == GONE:\n",
        replacement="        if outcome == GONE:\n            return\n",
        tests=(
            "tests/integration/test_adversarial_rollout_records.py::test_review_pruning_the_watched_versions_record_silences_its_failure",
        ),
    ),
    Mutant(
        id="M76",
        file="operator/etcdconfig/store/store.py",
        guard="the scan leaves an earlier incarnation's rollout records below the retained versions",
        original="            if number.isdigit() and int(number) < oldest:\n",
        replacement="            if False:\n",
        tests=(
            "tests/integration/test_adversarial_rollout_records.py::test_review_retention_by_a_later_incarnation_orphans_the_earlier_ones_records",
        ),
    ),
    Mutant(
        id="M77",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a rollout record that does not parse stops the rollback",
        original='            if o is None or o.uid != uid or o.state != "Succeeded" or o.version >= below:\n',
        replacement='            if o.uid != uid or o.state != "Succeeded" or o.version >= below:  # type: ignore[union-attr]\n',
        tests=(
            "tests/integration/test_adversarial_rollout_records.py::test_review_a_record_that_is_not_an_object_kills_the_rollback",
        ),
    ),
    Mutant(
        id="M78",
        file="operator/etcdconfig/etcd/client.py",
        guard="a write refused for lack of space is reported as a request too large",
        original='    if "database space exceeded" in details:\n',
        replacement="    if False:\n",
        tests=(
            "tests/integration/test_etcd_space.py::test_a_full_etcd_records_nothing_and_recovers_once_space_is_freed",
        ),
    ),
    Mutant(
        id="M79",
        file="operator/etcdconfig/controller/reconciler.py",
        guard="a Config etcd has no space for reports itself in progress, not stalled",
        original="            reason, stalled = STORE_FULL, True\n",
        replacement="            reason, stalled = STORE_FULL, False\n",
        tests=(
            "tests/e2e/test_etcd_space_operator.py::test_a_full_etcd_stalls_the_change_says_why_and_records_it_once_space_is_freed",
        ),
    ),
    Mutant(
        id="M80",
        file="operator/etcdconfig/controller/reconciler.py",
        guard="every retry of a Config etcd has no space for emits another Event",
        original='            if not (was and was.get("status") == "True" and was.get("reason") == STORE_FULL):\n',
        replacement="            if True:\n",
        tests=(
            "tests/e2e/test_etcd_space_operator.py::test_a_full_etcd_stalls_the_change_says_why_and_records_it_once_space_is_freed",
        ),
    ),
    Mutant(
        id="M81",
        file="operator/etcdconfig/store/store.py",
        guard="retention by bytes prunes the new version when it alone exceeds the budget",
        original="                if total > change.max_bytes and v != version:\n",
        replacement="                if total > change.max_bytes:\n",
        tests=(
            "tests/integration/test_usage.py::test_the_index_is_exactly_the_retained_records_and_max_bytes_prunes_the_oldest",
        ),
    ),
    Mutant(
        id="M82",
        file="operator/etcdconfig/store/store.py",
        guard="a usage index that does not match the head is trusted",
        original="            and found.newest == head.version\n",
        replacement="",
        tests=(
            "tests/integration/test_usage.py::test_an_index_for_the_right_head_whose_entries_stop_short_is_measured",
        ),
    ),
    Mutant(
        id="M83",
        file="operator/etcdconfig/store/store.py",
        guard="a Purge leaves its versions in the usage index",
        original="                    tuple(e for e in index.entries if e[0] < low),\n",
        replacement="                    index.entries,\n",
        tests=(
            "tests/integration/test_usage.py::test_a_purge_takes_its_versions_out_of_the_index",
        ),
    ),
    Mutant(
        id="M84",
        file="operator/etcdconfig/store/store.py",
        guard="spec.history.maxBytes is not enforced",
        original="        if change.max_bytes is not None:\n",
        replacement="        if False:\n",
        tests=(
            "tests/integration/test_usage.py::test_the_index_is_exactly_the_retained_records_and_max_bytes_prunes_the_oldest",
        ),
    ),
    Mutant(
        id="M85",
        file="operator/etcdconfig/controller/loops.py",
        guard="the resync skips a Config that changed since it settled",
        original='        if every <= 1 or self._settled.get(meta["uid"]) != meta.get("resourceVersion"):\n',
        replacement="        if every <= 1:\n",
        tests=(
            "tests/unit/test_resync_rounds.py::test_a_settled_config_is_skipped_until_it_changes_its_turn_comes_or_members_change",
        ),
    ),
    Mutant(
        id="M86",
        file="operator/etcdconfig/controller/loops.py",
        guard="a hand-over leaves settled Configs unchecked",
        original="            self._settled.clear()  # a hand-over: check everything once\n",
        replacement="            pass\n",
        tests=(
            "tests/unit/test_resync_rounds.py::test_a_settled_config_is_skipped_until_it_changes_its_turn_comes_or_members_change",
        ),
    ),
    Mutant(
        id="M87",
        file="operator/etcdconfig/controller/loops.py",
        guard="a settled Config never gets its full check (drift never repaired)",
        original='        return (self.rounds + _spread(meta["uid"])) % every != 0\n',
        replacement="        return True\n",
        tests=(
            "tests/unit/test_resync_rounds.py::test_a_settled_config_is_skipped_until_it_changes_its_turn_comes_or_members_change",
        ),
    ),
    Mutant(
        id="M88",
        file="operator/etcdconfig/store/records.py",
        guard="a usage index claiming records larger than etcd accepts is trusted",
        original="                or size > limit\n",
        replacement="",
        tests=(
            "tests/integration/test_usage.py::test_an_index_claiming_records_larger_than_etcd_accepts_is_measured",
        ),
    ),
    Mutant(
        id="M89",
        file="operator/etcdconfig/store/store.py",
        guard="a usage index written for another head of the same number is trusted",
        original="            and found.head == head.record_checksum\n",
        replacement="",
        tests=(
            "tests/integration/test_adversarial_usage.py::test_review_an_old_release_purge_and_re_create_leaves_an_index_that_prunes_history",
        ),
    ),
    Mutant(
        id="M90",
        file="operator/etcdconfig/store/records.py",
        guard="a deeply nested usage index breaks every commit",
        original="            obj = json.loads(raw)\n        except (ValueError, RecursionError):\n",
        replacement="            obj = json.loads(raw)\n        except ValueError:\n",
        tests=(
            "tests/integration/test_adversarial_usage.py::test_review_a_deeply_nested_index_breaks_every_commit_of_the_config",
        ),
    ),
    Mutant(
        id="M91",
        file="operator/etcdconfig/store/store.py",
        guard="the usage index takes the data's room in etcd's request limit",
        original="            len(record_raw) + len(head_raw) + len(sizes_raw) + _REQUEST_OVERHEAD\n            <= self.max_request_bytes\n",
        replacement="            True\n",
        tests=(
            "tests/integration/test_usage.py::test_an_index_that_would_overflow_etcds_request_limit_is_dropped_not_sent",
        ),
    ),
    Mutant(
        id="M92",
        file="operator/etcdconfig/concurrency/membership.py",
        guard="a membership change undone before the next round leaves settled Configs unchecked",
        original="            self.generation += 1  # every change counts, also one undone before it was seen\n",
        replacement="",
        tests=(
            "tests/integration/test_adversarial_resync.py::test_review_a_hand_over_and_back_between_rounds_leaves_the_config_skipped",
        ),
    ),
    Mutant(
        id="M93",
        file="operator/etcdconfig/metrics.py",
        guard="a former owner keeps exporting etcdconfig_unpinned_pods of a Config handed over",
        original="    for namespace, name in [k for k in {*_config_states, *_unpinned} if k not in keep]:\n",
        replacement="    for namespace, name in [k for k in _config_states if k not in keep]:\n",
        tests=(
            "tests/unit/test_unpinned_gauge.py::test_the_series_of_a_config_no_longer_owned_or_deleted_goes",
        ),
    ),
    Mutant(
        id="M94",
        file="operator/etcdconfig/controller/loops.py",
        guard="the integrity scan's bookkeeping (usage, rollout records) keeps a violation from being reported",
        original="            self.rt.note_usage(uid, await self.rt.store.usage(ns, name))\n        except EtcdConfigError as exc:\n",
        replacement="            self.rt.note_usage(uid, await self.rt.store.usage(ns, name))\n        except ZeroDivisionError as exc:\n",
        tests=(
            "tests/integration/test_adversarial_integrity_status.py::test_a_corrupt_head_is_reported_by_the_scan_although_its_usage_cannot_be_read",
        ),
    ),
    Mutant(
        id="M95",
        file="operator/etcdconfig/controller/loops.py",
        guard="a Config a transiently failed rollout asked to recheck stays skipped while settled",
        original='        if meta["uid"] in recheck:\n',
        replacement="        if False:\n",
        tests=(
            "tests/unit/test_resync_rounds.py::test_a_config_a_failed_rollout_asks_for_is_reconciled_though_settled",
        ),
    ),
    Mutant(
        id="M96",
        file="operator/etcdconfig/controller/rollouts.py",
        guard="a rollout that failed transiently waits for its Config's full check (up to ten rounds)",
        original="            self.rt.recheck.add(uid)  # the next resync round reconciles it, settled or not\n",
        replacement="",
        tests=(
            "tests/unit/test_adversarial_rollouts_units.py::test_a_rollout_that_fails_transiently_asks_the_next_resync_round_for_it",
        ),
    ),
    Mutant(
        id="M97",
        file="operator/etcdconfig/controller/handlers.py",
        guard="kopf's session is capped: a bulk of Configs does not open a connection per Config",
        original="connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),",
        replacement="connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),",
        tests=(
            "tests/e2e/test_api_connections.py::test_a_bulk_of_configs_stays_within_the_connection_cap",
        ),
    ),
    Mutant(
        id="M98",
        file="operator/etcdconfig/kube.py",
        guard="the operator's own Kubernetes client is capped (the generated client allows 100)",
        original="        cfg.connection_pool_maxsize = connections\n",
        replacement="        pass\n",
        tests=(
            "tests/e2e/test_api_connections.py::test_a_bulk_of_configs_stays_within_the_connection_cap",
        ),
    ),
    Mutant(
        id="M99",
        file="operator/etcdconfig/controller/loops.py",
        guard="a recheck is consumed only when a worker takes its Config up, not by the round's first pass",
        original="            return False  # the worker that takes it up consumes the recheck (``once``)\n",
        replacement='            recheck.discard(meta["uid"])\n            return False\n',
        tests=(
            "tests/unit/test_review_resync_queue.py::test_review_a_round_cancelled_midway_drops_the_rechecks_it_never_reached",
        ),
    ),
    Mutant(
        id="M100",
        file="operator/etcdconfig/controller/loops.py",
        guard="a cancelled future inside one Config's step is that Config's failure, not its worker's end",
        original="                if task is None or task.cancelling():\n",
        replacement="                if True:\n",
        tests=(
            "tests/unit/test_review_resync_queue.py::test_a_stray_cancellation_in_one_step_fails_that_config_and_the_round_goes_on",
        ),
    ),
    Mutant(
        id="M101",
        file="operator/etcdconfig/controller/loops.py",
        guard="a round that ends early leaves no worker running beside the next round",
        original="            for task in workers:\n                task.cancel()\n",
        replacement="            for task in workers:\n                pass\n",
        tests=(
            "tests/unit/test_review_resync_queue.py::test_no_worker_outlives_a_round_that_ends_early",
        ),
    ),
    Mutant(
        id="M102",
        file="operator/etcdconfig/settings.py",
        guard="--namespaces takes names only: a pattern would open more watch streams than the cap reserves",
        original="            if not _NAMESPACE.fullmatch(name):\n",
        replacement="            if False:\n",
        tests=(
            "tests/unit/test_api_connections_units.py::test_a_namespace_pattern_or_bad_name_is_refused_with_the_entry",
        ),
    ),
    Mutant(
        id="M103",
        file="operator/etcdconfig/controller/handlers.py",
        guard="kopf's login gives back the same session for unchanged credentials (no endless re-login)",
        original="        if last is not None and last[0] == info:\n",
        replacement="        if False:\n",
        tests=(
            "tests/unit/test_api_connections_units.py::test_login_caps_kopfs_session_and_returns_it_again_for_the_same_credentials",
        ),
    ),
    Mutant(
        id="M104",
        file=MUTEX,
        guard="a lock waiter gives up as soon as its session is lost (no wait for the holder)",
        original="            await asyncio.wait((gone, lost), return_when=asyncio.FIRST_COMPLETED)\n",
        replacement="            await asyncio.wait((gone,), return_when=asyncio.FIRST_COMPLETED)\n",
        tests=(
            "tests/integration/test_lock.py::test_a_waiter_gives_up_as_soon_as_its_session_is_lost",
            "tests/integration/test_adversarial_resync_queue.py::test_review_a_lost_session_keeps_the_round_waiting_for_a_lock_it_can_never_get",
        ),
    ),
    Mutant(
        id="M105",
        file="operator/etcdconfig/controller/loops.py",
        guard="the resync listing holds one page at a time, not the one before it too",
        original="                del page  # not held while the next page is fetched\n",
        replacement="",
        tests=(
            "tests/unit/test_resync_pages.py::test_a_round_over_settled_configs_holds_one_page_not_the_list",
        ),
    ),
    Mutant(
        id="M106",
        file="operator/etcdconfig/controller/loops.py",
        guard="a skipped Config kept for the integrity scan is kept as its name and uid only",
        original='                    work.append(({"metadata": stub}, True))\n',
        replacement="                    work.append((obj, True))\n",
        tests=(
            "tests/unit/test_resync_pages.py::test_with_the_integrity_scan_due_skipped_configs_are_kept_as_names_only",
        ),
    ),
    Mutant(
        id="M107",
        file="operator/etcdconfig/controller/loops.py",
        guard="a listing that saw the membership change prunes no usage, series or settled state",
        original="        if self._membership() == members:\n",
        replacement="        if True:\n",
        tests=(
            "tests/integration/test_adversarial_resync_pages.py::test_review_usage_of_a_config_taken_over_between_pages_is_dropped",
        ),
    ),
    Mutant(
        id="M108",
        file="operator/etcdconfig/controller/runtime.py",
        guard="a commit's usage replaces the Config's previous usage in the history sums",
        original="        self._usage_totals[1] += size - was_size\n",
        replacement="        self._usage_totals[1] += size\n",
        tests=(
            "tests/unit/test_usage_totals.py::test_the_sums_follow_every_commit_and_every_round",
        ),
    ),
    Mutant(
        id="M109",
        file="operator/etcdconfig/metrics.py",
        guard="etcdconfig_config_state is 1 for the Config's state and 0 for the other four",
        original="                family.add_metric([namespace, name, s], 1.0 if s == state else 0.0)\n",
        replacement="                family.add_metric([namespace, name, s], 1.0)\n",
        tests=("tests/unit/test_consumer_config_state.py",),
    ),
    Mutant(
        id="M110",
        file="operator/etcdconfig/kube.py",
        guard="the operator's client reads proxy settings once, not per request in a thread",
        original="        connector=connector, trust_env=False, read_bufsize=2**21\n",
        replacement="        connector=connector, trust_env=True, read_bufsize=2**21\n",
        tests=(
            "tests/unit/test_kube_session.py::test_the_session_does_not_consult_the_environment_per_request",
        ),
    ),
    Mutant(
        id="M111",
        file="operator/etcdconfig/kube.py",
        guard="an Event the API server refused is reported, though its answer is not parsed",
        original="                if not 200 <= int(response.status) <= 299:\n",
        replacement="                if False:\n",
        tests=(
            "tests/unit/test_kube_event.py::test_a_refusal_is_logged_with_the_exact_permission",
        ),
    ),
    Mutant(
        id="M113",
        file="operator/etcdconfig/controller/reconciler.py",
        guard="a reconcile that finds the generation recorded builds the status the commit built",
        original="                    head_generation=mine.generation,\n",
        replacement="                    head_generation=0,\n",
        tests=(
            "tests/integration/test_status_settles.py::test_a_config_its_event_recorded_is_left_alone_by_the_next_round",
        ),
    ),
    Mutant(
        id="M114",
        file="operator/etcdconfig/controller/runtime.py",
        guard="a round forgets the integrity verdicts of Configs this replica no longer owns",
        original="        for uid in [u for u in self.intact if u not in uids]:\n",
        replacement="        for uid in []:\n",
        tests=(
            "tests/unit/test_usage_totals.py::test_a_round_forgets_the_integrity_verdicts_of_configs_no_longer_owned",
        ),
    ),
    Mutant(
        id="M115",
        file="operator/etcdconfig/controller/loops.py",
        guard="a hand-over round drops this replica's clean integrity verdicts",
        original='            for uid in [u for u, c in verdicts.items() if c.get("status") != "False"]:\n',
        replacement="            for uid in []:\n",
        tests=(
            "tests/integration/test_review_status_settles_intact.py",
            "tests/integration/test_review_intact_at.py",
        ),
    ),
)
