/*
 * etcdconfig.pml — the recording protocol of etcdconfig, checked exhaustively by SPIN.
 *
 * One Config name (namespace/name), two operator replicas (workers), two object
 * incarnations (uids) that Kubernetes creates, updates and deletes one after the
 * other, and the etcd keys of DESIGN.md §3:
 *
 *   head                     hv hu hg hd        version, uid, generation, deleted
 *   versions/{N}             vu vg vd vc [N]    uid, generation, data, commit id
 *   incarnations/{uid}       inc[uid]           UNSEEN (absent), SEEN, DELETED
 *   locks/configs/../{lease} kpos[lease]        rank by create revision (1 = holder)
 *
 * How each step of the model maps to the code (spec/README.md has the same table,
 * with the reasons behind every abstraction):
 *
 *   model step                     code
 *   -----------------------------  ---------------------------------------------------------
 *   User                           kubectl apply / delete; the API server bumps
 *                                  metadata.generation and sets deletionTimestamp; our
 *                                  finalizer (etcdconfig.io/finalizer) keeps the object
 *   Worker end_idle RECONCILE_WORK controller/handlers.py reconcile -> Reconciler._reconcile
 *                                  (the body's uid, generation, spec.data), also
 *                                  controller/loops.py Resync.reconcile_one on a listed
 *                                  copy; the guard is _reconcile's unlocked head check
 *                                  ("mine.generation >= generation": nothing to do)
 *   Worker end_idle FINALIZE_WORK  controller/handlers.py finalize (unfiltered: every
 *                                  replica may run it)
 *   acquire                        concurrency/locks.py ConfigLocks.hold ->
 *                                  concurrency/mutex.py Mutex.acquire/_acquire: one txn
 *                                  IF create_revision(key)=0 THEN put(key, lease) ELSE
 *                                  get(key); owner = oldest key; head prefetched
 *   wait                           Mutex._acquire wait loop (_wait_delete on the
 *                                  predecessor) and the final get(self.key) -> LockLost
 *   cleanup                        Mutex.acquire's except path -> Mutex._abandon
 *   read_head + decide (record)    store/store.py VersionedStore._commit_once: head and
 *                                  incarnation read, StaleIncarnation, already recorded,
 *                                  OwnerUnconfirmed -> Reconciler._record asks the API
 *                                  server (kube.get_config) under the lock, version N+1
 *   commit_txn                     _commit_once's txn (compares: Mutex.is_owner(), i.e.
 *                                  create_revision(lock key); mod_revision(head);
 *                                  create_revision(versions/N+1)=0; incarnations/{uid}
 *                                  unchanged) and _classify_failure
 *   retry                          VersionedStore.commit after EtcdUnavailable
 *                                  (after_unknown): re-read head, landed by commit id
 *   read_head + decide (finalize)  VersionedStore.delete: head read, Purge range
 *   delete_txn                     VersionedStore.delete's txn: tombstone, incarnation
 *                                  DELETED, Purge of the uid's own versions, lock key
 *   release                        Mutex.release -> Mutex._abandon (delete IF
 *                                  create_revision = ours), from ConfigLocks.hold finally
 *   unfin                          kopf removes the finalizer after finalize returns
 *   Faults expire                  etcd expires the lease (pause, partition);
 *                                  Session._keepalive sets done; Runtime._keep_session
 *                                  starts a new Session (new lease)
 *   crash + TTL                    the process dies; its lease expires after Session.ttl
 *
 * Hazards the protocol must survive besides the faults above: STALE (a decision taken
 * on the head prefetched by the acquire transaction although the acquire had to wait —
 * a head read older than the lock) and TAMPER (something else puts a version key beyond
 * the head — store.py _classify_failure, "written by something else?").
 *
 * Mutants (each removes one guard; spin -DMUTANT_... -a spec/etcdconfig.pml):
 *   MUTANT_NO_FENCE                 commit/tombstone without create_revision(lock key)
 *   MUTANT_NO_HEAD_CMP              without mod_revision(head) = R
 *   MUTANT_NO_VERSION_CMP           without create_revision(versions/N+1) = 0
 *   MUTANT_NO_INCARNATION           writes for a uid whose deletion was recorded
 *   MUTANT_NO_ACQUIRE_CLEANUP       an unknown acquire leaves its key behind
 *   MUTANT_LANDED_BY_GENERATION     "landed" decided by (uid, generation), not commit id
 *   MUTANT_PURGE_ALL                Purge deletes every version, not the uid's own
 */

/* ---- sizes ---------------------------------------------------------------- */
#define NW      2          /* workers (operator replicas) */
#define NL      4          /* leases: worker w holds lease 2w, then 2w+1 after a fault */
#define NV      6          /* version slots 1..5 (slot 0 unused) */
#define NU      3          /* uids 1 and 2 (index 0 = none) */
#define MAXATT  2          /* commit attempts (VersionedStore.max_attempts, cut to 2) */

#define RETAIN  0
#define PURGE   1

#define UNSEEN  0          /* incarnations/{uid} absent */
#define SEEN    1
#define DELETED 2

#define FOREIGN 3          /* uid field of a version key written by something else */

#define R_OK      0
#define R_UNKNOWN 2

/* ---- fault budgets: finite, so liveness can hold -------------------------- */
#ifndef FAULTS
#define FAULTS 1           /* lease expiries (pause/partition) + crashes */
#endif
#ifndef UNKNOWNS
#define UNKNOWNS 1         /* requests (acquire, commit, tombstone) whose outcome is lost */
#endif
#ifndef STALE
#define STALE 1            /* decisions taken on a head read older than the lock */
#endif
#ifndef RFAILS
#define RFAILS 1           /* transient failures of a separate key delete */
#endif
#ifndef TAMPER
#define TAMPER 1           /* foreign version keys put beyond the head (0 for liveness:
                              the protocol then refuses to write, by design) */
#endif

/* ---- property names: SPIN prints them in "assertion violated (...)" -------- */
hidden byte NoWriteWithoutLock = 1;    /* a write lands only from the lock's holder */
hidden byte NeverOverwritten = 1;      /* a version key is put only where none exists */
hidden byte NothingAfterDeletion = 1;  /* no record for a uid whose deletion was recorded */
hidden byte OwnerAtWrite = 1;          /* a record is written while its uid owns the name */
hidden byte OncePerGeneration = 1;     /* a uid's recorded generations strictly increase */
hidden byte NoStaleData = 1;           /* (uid, generation, data) existed in Kubernetes */
hidden byte Contiguous = 1;            /* versions 1..head all present */
hidden byte HeadIsNewest = 1;          /* head = newest record; nothing of ours beyond */
hidden byte RetainedHistoryKept = 1;   /* Purge removes only the purging uid's records */
hidden byte LandedMeansApplied = 1;    /* "my commit landed" only if it did */

/* ---- Kubernetes ----------------------------------------------------------- */
byte ku;                   /* uid that owns the name now (0: none) */
byte kg;                   /* its metadata.generation */
bit  kd;                   /* its spec.data (changes with every generation) */
bool kdel;                 /* deletionTimestamp set; our finalizer still on */
bit  kpol[NU];             /* spec.deletionPolicy of each uid */
byte kmaxg[NU];            /* ghost: newest generation each uid ever had */
bool udone;                /* the user made the last change */

/* ---- etcd ----------------------------------------------------------------- */
byte hv; byte hu; byte hg; bool hd;   /* head (hu = 0: no head key) */
bool hval[NW];             /* worker w's head read still current: mod_revision unchanged */
byte vu[NV]; byte vg[NV]; bit vd[NV]; byte vc[NV];
byte inc[NU];
byte kpos[NL];             /* lock key of lease L: 0 absent, else rank by create revision */
byte kql;                  /* number of lock keys */
bool lalive[NL];
bool orphan[NL];           /* lease of a crashed process: alive until its TTL runs out */
byte wl[NW];               /* the session lease worker w uses now */

byte flt = FAULTS; byte unk = UNKNOWNS; byte stale = STALE; byte rf = RFAILS;
byte tamper = TAMPER;

hidden byte gi;            /* loop index inside atomic steps */

/* ---- etcd primitives ------------------------------------------------------ */
inline key_del(L) {
  if
  :: kpos[L] > 0 ->
     gi = 0;
     do
     :: gi < NL -> if :: kpos[gi] > kpos[L] -> kpos[gi]-- :: else fi; gi++
     :: else -> break
     od;
     kpos[L] = 0; kql--
  :: else
  fi
}

/* a lease ends: its keys vanish in the same instant */
inline expire(L) { key_del(L); lalive[L] = 0; orphan[L] = 0 }

/* every write of the head: the mod_revision every reader saw no longer matches */
inline head_write() { hval[0] = 0; hval[1] = 0 }

/* after a head write, something else may put a version key right beyond it */
inline maybe_tamper() {
  if
  :: tamper > 0 && vu[hv + 1] == 0 -> tamper--; vu[hv + 1] = FOREIGN;
     printf("MSC: something else puts versions/%d\n", hv + 1)
  :: true
  fi
}

/* the store's invariants, checked after every write */
inline check_store() {
  gi = 1;
  do
  :: gi < NV ->
     if
     :: gi <= hv -> assert(Contiguous && vu[gi] != 0 && vu[gi] != FOREIGN)
     :: else -> assert(HeadIsNewest && (vu[gi] == 0 || vu[gi] == FOREIGN))
     fi;
     gi++
  :: else -> break
  od;
  if
  :: !hd && hu != 0 -> assert(HeadIsNewest && vu[hv] == hu && vg[hv] == hg)
  :: else
  fi
}

/* ---- Kubernetes: the user ------------------------------------------------- */
proctype User() {
  atomic {
    ku = 1; kg = 1; kd = 0; kmaxg[1] = 1;
    if :: kpol[1] = RETAIN :: kpol[1] = PURGE fi;
    printf("MSC: create uid 1 (policy %d)\n", kpol[1])
  };
  if
  :: atomic { kg = 2; kd = 1; kmaxg[1] = 2; printf("MSC: update uid 1 to generation 2\n") }
  :: skip
  fi;
  if
  :: goto done
  :: atomic { kdel = 1; printf("MSC: delete uid 1\n") }
  fi;
  ku == 0;                 /* finalizer removed: the object is gone, the name is free */
  atomic {
    ku = 2; kg = 1; kd = 0; kmaxg[2] = 1;
    if :: kpol[2] = RETAIN :: kpol[2] = PURGE fi;
    printf("MSC: create uid 2 (policy %d)\n", kpol[2])
  };
  if
  :: skip
  :: atomic { kdel = 1; printf("MSC: delete uid 2\n") }; ku == 0
  fi;
done:
  udone = 1
}

/* ---- faults: a pause or partition expires worker 0's lease while it has a key.
   Only worker 0: the workers are symmetric and the budget is one. ---------------- */
proctype Faults() {
end_faults:
  do
  :: atomic {
       flt > 0 && wl[0] == 0 && kpos[0] > 0 ->
       flt--; expire(0); wl[0] = 1; lalive[1] = 1;
       printf("MSC: lease 0 expires (worker 0 paused); worker 0 starts lease 1\n")
     }
  od
}

/* etcd expires the lease of a crashed process once its TTL runs out */
proctype TTL() {
end_ttl:
  do
  :: atomic { orphan[0] -> expire(0); printf("MSC: TTL of lease 0 runs out\n") }
  :: atomic { orphan[1] -> expire(1); printf("MSC: TTL of lease 1 runs out\n") }
  :: atomic { orphan[2] -> expire(2); printf("MSC: TTL of lease 2 runs out\n") }
  :: atomic { orphan[3] -> expire(3); printf("MSC: TTL of lease 3 runs out\n") }
  od
}

/* ---- a worker (an operator replica) -------------------------------------- */
#define N_DONE     0       /* operation over */
#define N_TXN      1       /* send the commit / tombstone transaction */
#define N_RELEASE  2       /* separate release of the lock key, then done */
#define N_UNFIN    3       /* tombstone recorded: remove the finalizer */
#define N_RELUNFIN 4       /* release, then remove the finalizer */
#define N_WAIT     5       /* queued behind an older key */
#define N_CLEANUP  6       /* acquire outcome unknown: delete our key by name */
#define N_RETRY    7       /* commit outcome unknown: re-read the head */

#ifdef MUTANT_NO_FENCE
#define FENCE 1
#else
#define FENCE (kpos[myl] > 0 && tok)
#endif
#ifdef MUTANT_NO_HEAD_CMP
#define HEADCMP 1
#else
#define HEADCMP hval[w]
#endif
#ifdef MUTANT_NO_VERSION_CMP
#define VABSENT 1
#else
#define VABSENT (vu[N] == 0)
#endif
/* the commit id stored in the record (fencingRevision): unique per operation */
#define CID (myl + 1)
#ifdef MUTANT_LANDED_BY_GENERATION
#define LANDED (ru == su && rg == sg && !rdel)
#else
#define LANDED (ru == su && rg == sg && !rdel && rc == CID)
#endif

/* work a watch event or a resync hands to a replica: not recorded yet / being deleted */
#define RECONCILE_WORK (ku != 0 && !kdel && !(hu == ku && !hd && hg >= kg))
#define FINALIZE_WORK (ku != 0 && kdel)
#define CAN_CRASH (flt > 0 && w == 0 && wl[w] == 0)

inline put_or_adopt() {
  if
  :: kpos[myl] == 0 -> kql++; kpos[myl] = kql
  :: else
  fi;
  tok = 1
}

/* one linearizable read: head, its record's commit id, incarnations/{uid} */
inline read_head() {
  rv = hv; ru = hu; rg = hg; rdel = hd; hval[w] = 1;
  rc = vc[rv];
  ri = inc[su]
}

/* what to do with what was read, under the lock */
inline decide() {
  if
  :: fin ->
     if
     :: ri == DELETED -> nxt = N_RELUNFIN                     /* deletion already recorded */
     :: else ->
        T = rv;                                             /* tombstone's version */
        if
        :: spol == PURGE -> do :: T > 0 && vu[T] == su -> T-- :: else -> break od
        :: else
        fi;
#ifdef MUTANT_PURGE_ALL
        if :: spol == PURGE -> T = 0 :: else fi;
#endif
        nxt = N_TXN
     fi
  :: else ->
     if
     :: att > 0 && LANDED ->                                /* the lost attempt landed */
        assert(LandedMeansApplied && applied);
        printf("MSC: worker %d: my commit landed\n", w);
        nxt = N_DONE
     :: else ->
#ifndef MUTANT_NO_INCARNATION
        if
        :: ri == DELETED || (ru == su && rdel) -> nxt = N_RELEASE      /* StaleIncarnation */
        :: else ->
#endif
           if
           :: ru == su && !rdel && rg >= sg -> nxt = N_RELEASE         /* already recorded */
           :: else ->
              if
              :: ri == UNSEEN && ku != su -> nxt = N_RELEASE  /* API server: not the owner */
              :: else -> nxt = N_TXN; N = rv + 1
              fi
           fi
#ifndef MUTANT_NO_INCARNATION
        fi
#endif
     fi
  fi;
  rv = 0; ru = 0; rg = 0; rdel = 0; rc = 0
}

inline commit_txn() {
  if
  :: FENCE && HEADCMP && VABSENT && inc[su] == ri ->
     assert(NoWriteWithoutLock && kpos[myl] == 1 && tok);
     assert(NeverOverwritten && vu[N] == 0);
     assert(NothingAfterDeletion && inc[su] != DELETED);
     assert(OwnerAtWrite && ku == su);
     assert(NoStaleData && sg <= kmaxg[su] && sd == (sg - 1) % 2);
     gi = 1;
     do
     :: gi < NV -> assert(OncePerGeneration && (vu[gi] != su || vg[gi] < sg)); gi++
     :: else -> break
     od;
     vu[N] = su; vg[N] = sg; vd[N] = sd; vc[N] = CID;
     head_write(); hv = N; hu = su; hg = sg; hd = 0;
     if :: inc[su] == UNSEEN -> inc[su] = SEEN :: else fi;
     key_del(myl);
     check_store();
     printf("MSC: worker %d commits version %d = (uid %d, generation %d)\n", w, N, su, sg);
     maybe_tamper();
     applied = 1;
     if :: res == R_OK -> nxt = N_DONE :: else fi
  :: else ->
     if
     :: res == R_OK ->
        if
        :: kpos[myl] > 0 && tok -> nxt = N_RELEASE   /* conflict, corrupt: the caller releases */
        :: else -> nxt = N_DONE                      /* LockLost: nothing to release */
        fi;
        printf("MSC: worker %d: commit refused\n", w)
     :: else
     fi
  fi
}

inline delete_txn() {
  if
  :: FENCE && HEADCMP && inc[su] == ri ->
     assert(NoWriteWithoutLock && kpos[myl] == 1 && tok);
     if
     :: spol == PURGE ->
        gi = T + 1;
        do
        :: gi < NV ->
           if
           :: vu[gi] != 0 && vu[gi] != FOREIGN ->
              assert(RetainedHistoryKept && vu[gi] == su);
              vu[gi] = 0; vg[gi] = 0; vd[gi] = 0; vc[gi] = 0
           :: else
           fi;
           gi++
        :: else -> break
        od
     :: else
     fi;
     head_write(); hv = T; hu = su; hg = 0; hd = 1;
     inc[su] = DELETED;
     key_del(myl);
     check_store();
     printf("MSC: worker %d records the deletion of uid %d (head version %d)\n", w, su, T);
     maybe_tamper();
     if :: res == R_OK -> nxt = N_UNFIN :: else fi
  :: else ->
     if :: res == R_OK -> nxt = N_RELEASE; printf("MSC: worker %d: tombstone refused\n", w)
     :: else fi
  fi
}

/* the process dies: its lease lives on until the TTL; the restarted process has a new one */
inline crash() {
  flt--; orphan[wl[w]] = 1; wl[w] = wl[w] + 1; lalive[wl[w]] = 1;
  printf("MSC: worker %d crashes and restarts with lease %d\n", w, wl[w])
}

/* the operation is over: forget everything (a commit id matters only to the
   operation that wrote it) and wait for the next piece of work */
inline finish() {
  gi = 1;
  do :: gi < NV -> if :: vc[gi] == CID -> vc[gi] = 0 :: else fi; gi++ :: else -> break od;
  hval[w] = 0;
  myl = 0; tok = 0; su = 0; sg = 0; sd = 0; spol = 0; att = 0; N = 0; T = 0; res = 0;
  rv = 0; ru = 0; rg = 0; rc = 0; ri = 0; fin = 0; rdel = 0; applied = 0; nxt = 0;
  goto end_idle
}

inline jump() {
  if
  :: nxt == N_DONE -> finish()
  :: nxt == N_TXN -> goto txn
  :: nxt == N_RELEASE || nxt == N_RELUNFIN -> goto release
  :: nxt == N_UNFIN -> goto unfin
  :: nxt == N_WAIT -> goto wait
  :: nxt == N_CLEANUP -> goto cleanup
  :: nxt == N_RETRY -> goto retry
  fi
}

proctype Worker(byte w) {
  byte myl;                /* the lease of this operation */
  bool tok;                /* we believe we own a lock key (its create revision is known) */
  byte su, sg; bit sd;     /* the object as delivered: uid, generation, data */
  bool fin; byte spol;     /* finalizer run; its deletion policy */
  byte rv, ru, rg, rc, ri; bool rdel;   /* what the last read returned */
  byte N, T;               /* version to write; tombstone's version */
  byte att, res, nxt;
  bool applied;            /* ghost: this operation's commit applied */

end_idle:
  if
  :: atomic { RECONCILE_WORK -> su = ku; sg = kg; sd = kd; myl = wl[w];
              printf("MSC: worker %d takes (uid %d, generation %d)\n", w, su, sg) }
  :: atomic { FINALIZE_WORK -> su = ku; spol = kpol[ku]; fin = 1; myl = wl[w];
              printf("MSC: worker %d finalizes uid %d\n", w, su) }
  fi;
  /* between here and the next step the object may change: a late event, a stale list */

  /* Mutex.acquire: put our key if absent (else adopt it) and read the owner; the
     holder has the head prefetched by the same transaction */
  atomic {
    if
    :: !lalive[myl] -> nxt = N_DONE                 /* session lost: new lease next time */
    :: else ->
       if
       :: unk > 0 -> unk--; if :: put_or_adopt() :: skip fi; tok = 0; nxt = N_CLEANUP;
          printf("MSC: worker %d: acquire outcome unknown\n", w)
       :: true -> put_or_adopt();
          if
          :: kpos[myl] == 1 -> read_head(); decide()
          :: else -> nxt = N_WAIT;
             if :: stale > 0 -> read_head() :: else fi   /* the prefetch, kept while waiting */
          fi
       fi
    fi;
    jump()
  };

wait:      /* every older key must go; then our own key must still be there */
  if
  :: atomic {
       kpos[myl] <= 1 ->
       if
       :: kpos[myl] == 1 ->
          if
          :: stale > 0 -> stale--;                    /* hazard: decide on the prefetch */
             printf("MSC: worker %d decides on the head read before waiting\n", w)
          :: true -> read_head()
          fi;
          decide()
       :: else -> nxt = N_DONE                       /* LockLost: our key vanished */
       fi;
       jump()
     }
  :: atomic { CAN_CRASH -> crash(); finish() }
  fi;

cleanup:   /* the acquire's outcome is unknown: our key may exist; delete it by name */
#ifndef MUTANT_NO_ACQUIRE_CLEANUP
  do
  :: atomic { rf > 0 -> rf--; printf("MSC: worker %d: delete failed, retrying\n", w) }
  :: atomic { key_del(myl); finish() }
  od;
#else
  atomic { finish() };
#endif

retry:     /* the commit's outcome is unknown: re-read the head (landed?) */
  atomic { read_head(); decide(); jump() };

txn:
  if
  :: atomic { CAN_CRASH -> crash(); finish() }
  :: atomic {
       !fin ->
       if
       :: unk > 0 -> unk--; res = R_UNKNOWN; if :: commit_txn() :: skip fi;
          printf("MSC: worker %d: commit outcome unknown\n", w);
          att++; if :: att < MAXATT -> nxt = N_RETRY :: else -> nxt = N_RELEASE fi
       :: true -> res = R_OK; commit_txn()
       fi;
       N = 0; ri = 0; res = 0;
       jump()
     }
  :: atomic {
       fin ->
       if
       :: unk > 0 -> unk--; res = R_UNKNOWN; if :: delete_txn() :: skip fi; nxt = N_RELEASE;
          printf("MSC: worker %d: tombstone outcome unknown\n", w)
       :: true -> res = R_OK; delete_txn()
       fi;
       T = 0; ri = 0; res = 0;
       jump()
     }
  fi;

release:   /* a separate delete of our key, IF its create revision is still ours */
  do
  :: atomic { rf > 0 -> rf--; printf("MSC: worker %d: release failed, retrying\n", w) }
  :: atomic {
       if :: kpos[myl] > 0 && tok -> key_del(myl) :: else fi;
       if :: nxt == N_RELUNFIN -> goto unfin :: else -> finish() fi
     }
  od;

unfin:     /* kopf removes the finalizer: the object is gone, the name is free */
  if
  :: atomic { nxt == N_UNFIN && CAN_CRASH -> crash(); finish() }
  :: atomic {
       if
       :: ku == su && kdel -> ku = 0; kdel = 0; printf("MSC: uid %d is gone\n", su)
       :: else
       fi;
       finish()
     }
  fi
}

init {
  atomic {
    lalive[0] = 1; lalive[2] = 1; wl[0] = 0; wl[1] = 2;
    run User(); run Faults(); run TTL(); run Worker(0); run Worker(1)
  }
}

/* ---- liveness, with TAMPER=0. Checked without fairness (pan -a, no -f): every
   weakly fair run is a run, so this is the stronger check. With TAMPER=0 the model
   has no cycles at all (pan -l finds no non-progress cycle): every run ends, and
   these claims speak about the state it ends in. ------------------------------------ */
#define settled (udone && (ku == 0 || (!kdel && hu == ku && hg == kg && !hd)))
ltl recorded { <>[] settled }          /* the final generation is recorded (or the deletion) */
ltl unlocked { <>[] (kql == 0) }       /* no lock key outlives its holder's interest */
ltl live { <>[] (settled && kql == 0) }
