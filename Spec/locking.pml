/*
 * LunarFS lock protocol: heartbeats, compare-and-write locks, lock breaking as recovery,
 * self-fencing.  The protocol is described in Spec/locking.md; section numbers (§) and rule
 * numbers (R1 ...) below refer to it.
 *
 * Check (Tests/IntegrationTests/LockModelTests.swift does exactly this):
 *
 *     spin -a locking.pml
 *     gcc -O2 -DSAFETY -DCOLLAPSE -o pan pan.c
 *     ./pan -m1000000
 *
 * Expected: "errors: 0".  Configurations: -DNH=3 -DROUNDS=1 (default: three hosts, a dead
 * recoverer can be recovered in turn) and -DNH=2 -DROUNDS=2 (two hosts, each updating twice,
 * so a journal can outlive the lock that guarded it).
 *
 * Deliberately broken variants, each of which spin must reject (errors: 1):
 *     -DBROKEN_NO_WAIT        the breaker claims the owner's slot without waiting T      (R5)
 *     -DBROKEN_NO_REPLAY      the breaker takes the lock without replaying the journal   (R5)
 *     -DBROKEN_NO_MARGIN      hosts fence only after T, not T - margin                    (R3)
 *     -DBROKEN_NO_CHECKPOINT  a host releases the lock with its journal still live       (R6)
 *     -DBROKEN_KEEP_JOURNAL   the breaker does not mark a replayed journal empty         (R5)
 *
 * What is abstracted, and why it is sound (see locking.md §5):
 *   - Time is a global tick.  Every host's clock (its age since its last renewal, an
 *     observer's wait) advances by the same tick: clock rate differences are absorbed by the
 *     margin.  No host ever reads another host's clock.
 *   - The 64-bit heartbeat counter is abstracted to "has it changed since I sampled it"
 *     (moved[observer]); a 64-bit counter does not wrap.
 *   - A crash is a host that never takes another step; a stall is a host that takes no step
 *     while the clock ticks.  Spin explores every interleaving, so every crash point and every
 *     stall of any length is covered.  The one exception is the window between a fence check
 *     and the write it guards: by assumption A1 it lasts at most MARGIN ticks, so the clock
 *     may not tick further while a host is in that window.
 *   - One lock, guarding one object (an integer).  A transaction reads it and writes it + 1.
 *     A journal holds at most one live transaction image of the object (a redo log of full
 *     images: replaying all of it leaves the last image).
 */

#ifndef NH
#define NH 3            /* hosts; host h owns heartbeat slot h and journal h */
#endif
#ifndef ROUNDS
#define ROUNDS 1        /* updates of the object each host makes */
#endif

#define T       3       /* lock-break timeout, in ticks (an observer waits this long)      */
#define MARGIN  1       /* assumption A1: fence check to write landing, at most this long  */
#ifdef BROKEN_NO_MARGIN
#define TFENCE  T
#else
#define TFENCE  (T - MARGIN)    /* R3: a host that has not renewed for TFENCE is fenced    */
#endif
#ifdef BROKEN_NO_WAIT
#define WAIT    0
#else
#define WAIT    T
#endif

#define NONE    15

/* heartbeat slot states (format.md §3.6) */
#define SFREE   0
#define SLIVE   1
#define SRECOV  2

/* lock modes (format.md §3.4); the model uses exclusive only */
#define LFREE   0
#define LEXCL   1

/* ---- the disk ---------------------------------------------------------------------------- */

typedef Slot {
    byte state;         /* SFREE / SLIVE / SRECOV                                          */
    byte claim;         /* claim generation                                                */
    byte rby;           /* recovered by (slot), NONE unless SRECOV                          */
};                      /* counter: abstracted, see moved[]                                */
Slot slot[NH];

byte lmode = LFREE;     /* the lock record                                                 */
byte lowner = NONE;
byte lclaim = 0;
byte lgen = 0;

byte obj = 0;           /* the object the lock guards, in place                            */
byte jval[NH];          /* journal of slot h: image of the object in its live transaction   */
bit  jlive[NH];         /* ... and whether that transaction is committed and not retired    */

/* ---- each host's own view of time ----------------------------------------------------------- */

byte age[NH];           /* ticks since the host's last successful renewal was issued (R3)  */
bit  inwin[NH];         /* between a passed fence check and the write it guards (A1)      */
byte sincechk[NH];      /* ticks since that fence check                                    */
bit  fenced[NH];        /* the host has fenced itself: it never writes again               */

byte watch[NH];         /* slot the host is observing (NONE: none)                         */
bit  moved[NH];         /* that slot's counter changed since the sample                    */
byte waited[NH];        /* ticks since the sample, on the observer's clock                 */

/* ---- ghosts: not on disk, not seen by hosts; they state the properties ------------------- */

byte committed = 0;     /* value of the last transaction whose commit completed            */
bit  broken[NH];        /* host h's slot was claimed by a breaker                          */
bit  inside[NH];        /* host h is in its critical section and its slot is not broken    */
bit  believes[NH];      /* host h believes it holds the lock exclusively                   */
byte writers = 0;       /* hosts inside, plus a breaker while it replays                  */
byte ii;                /* loop scratch, always 0 between steps                            */

#define FENCED_NOW(h)   (fenced[h] || age[h] >= TFENCE)

/* (a) two hosts that are not fenced never both believe they hold the lock */
#define EXCL_OK(i, j)   (!(believes[i] && believes[j] && !FENCED_NOW(i) && !FENCED_NOW(j)))
#if NH == 2
#define MUTEX_INV       (EXCL_OK(0, 1) && writers <= 1)
#else
#define MUTEX_INV       (EXCL_OK(0, 1) && EXCL_OK(0, 2) && EXCL_OK(1, 2) && writers <= 1)
#endif

/* R2, R3: the fence check before every write; a failed check fences for good. */
inline fence_check() {
    atomic {
        if
        :: !FENCED_NOW(me) -> inwin[me] = 1; sincechk[me] = 0
        :: else -> goto fence
        fi
    }
}

/* the write that closes the window opened by fence_check (inside an atomic) */
#define END_WINDOW      inwin[me] = 0; sincechk[me] = 0

/* (c) a host whose slot was claimed by a breaker never writes again (every write calls this) */
#define WROTE           assert(!broken[me])

/* (a') a host that passed its fence check still holds the lock it is about to use */
#define STILL_MINE      assert(lmode == LEXCL && lowner == me && lclaim == myclaim)

/* slot s's sector changed: every observer sampling it sees its counter move (inside the
   atomic step that changes the slot) */
#define TOUCH(s)        ii = 0; do :: ii < NH -> if :: watch[ii] == s -> moved[ii] = 1 :: else fi; ii++ \
                                   :: else -> break od; ii = 0

/* ---- host --------------------------------------------------------------------------------- */

#define IDLE        0   /* may try to take the lock                                        */
#define ACQUIRE     1   /* CAW the lock record read into rl_* to mine                      */
#define LOOK        2   /* the lock is held: judge the owner's slot                        */
#define OBSERVE     3   /* sampled the owner's counter, waiting T                          */
#define BREAK       4   /* CAW the sampled slot to "recovering, by me"                     */
#define REPLAY      5   /* replay the journal of slot x                                    */
#define EMPTY       6   /* mark the journal of slot x empty                                */
#define CHAIN       7   /* take over slots the dead slot was itself recovering             */
#define TAKELOCK    8   /* CAW locks held by the recovered slots to mine                   */
#define FREESLOTS   9   /* CAW the recovered slots free                                    */
#define ENTER      10   /* critical section: read the object                               */
#define COMMIT     11   /* write + flush the transaction to my journal                     */
#define INPLACE    12   /* write the object in place                                       */
#define CHECKPOINT 13   /* flush, then mark my journal empty                               */
#define RELEASE    14   /* CAW the lock free                                               */

proctype Host(byte me) {
    byte pc = IDLE;
    byte myclaim, rounds, v;
    byte s = NONE;                          /* slot observed / broken                           */
    byte x = NONE;                          /* slot whose journal is being recovered          */
    byte mine = 0;                          /* bit set of slots I claimed for recovery       */
    bit  took = 0;                          /* recovery moved the lock to me                 */
    byte rl_mode, rl_owner, rl_claim, rl_gen;   /* lock record as read                       */
    byte rs_state, rs_claim, rs_rby;            /* slot record as sampled                    */
    byte y;

    /* R2 join: claim my free slot by CAW (state free -> live, claim + 1) */
    atomic {
        slot[me].state == SFREE ->
        slot[me].state = SLIVE; slot[me].claim++; slot[me].rby = NONE;
        myclaim = slot[me].claim; age[me] = 0
    }

    do
    /* R2 renew: CAW expecting the image I last wrote; a mismatch fences me.  My age is
       measured from when the renewal was issued (the fence check), not from its completion. */
    :: fence_check();
       atomic {
           if
           :: slot[me].state == SLIVE && slot[me].claim == myclaim ->
                WROTE; age[me] = sincechk[me]; END_WINDOW; TOUCH(me)
           :: else -> goto fence
           fi
       }

    /* R4 acquire: read the lock record */
    :: pc == IDLE && rounds < ROUNDS ->
       atomic {
           rl_mode = lmode; rl_owner = lowner; rl_claim = lclaim; rl_gen = lgen;
           if
           :: rl_mode == LFREE -> pc = ACQUIRE
           :: else -> pc = LOOK
           fi
       }

    :: pc == ACQUIRE ->
       fence_check();
       atomic {
           if
           :: lmode == rl_mode && lowner == rl_owner && lclaim == rl_claim && lgen == rl_gen ->
                WROTE; lmode = LEXCL; lowner = me; lclaim = myclaim; lgen = rl_gen + 1; pc = ENTER
           :: else -> pc = IDLE            /* lost a race: try again later */
           fi;
           END_WINDOW;
           rl_mode = 0; rl_owner = 0; rl_claim = 0; rl_gen = 0
       }

    /* R4 liveness: the lock names slot s with claim c.  Read slot s. */
    :: pc == LOOK ->
       atomic {
           s = rl_owner;
           if
           :: s != me && slot[s].state == SLIVE && slot[s].claim == rl_claim ->
                skip                                    /* the owner may be alive: watch it   */
           :: s != me && slot[s].state == SRECOV && slot[s].rby != me && slot[s].rby != NONE &&
              slot[slot[s].rby].state == SLIVE ->
                s = slot[s].rby                         /* being recovered: watch the recoverer */
           :: s != me && (slot[s].state == SFREE || slot[s].claim != rl_claim) && slot[s].state != SRECOV ->
                s = NONE                                /* stale: that incarnation is recovered */
           :: else -> s = NONE; rl_mode = 0; rl_owner = 0; rl_claim = 0; rl_gen = 0; pc = IDLE
           fi;
           if
           :: pc == LOOK && s != NONE ->
                /* sample the counter; start waiting T on my own clock */
                rs_state = slot[s].state; rs_claim = slot[s].claim; rs_rby = slot[s].rby;
                watch[me] = s; moved[me] = 0; waited[me] = 0; pc = OBSERVE
           :: pc == LOOK && s == NONE -> pc = ACQUIRE
           :: else
           fi
       }

    /* the counter moved (the owner is alive), or the observer gives up: start over */
    :: pc == OBSERVE ->
       atomic {
           watch[me] = NONE; moved[me] = 0; waited[me] = 0; s = NONE;
           rs_state = 0; rs_claim = 0; rs_rby = 0;
           rl_mode = 0; rl_owner = 0; rl_claim = 0; rl_gen = 0; pc = IDLE
       }

    /* R5 break: no change of the counter for T on my clock */
    :: pc == OBSERVE && !moved[me] && waited[me] >= WAIT -> pc = BREAK

    :: pc == BREAK ->
       fence_check();
       atomic {
           watch[me] = NONE; waited[me] = 0;
           if
           :: !moved[me] && slot[s].state == rs_state && slot[s].claim == rs_claim && slot[s].rby == rs_rby ->
                WROTE;
                slot[s].state = SRECOV; slot[s].claim++; slot[s].rby = me;
                broken[s] = 1; writers = writers - inside[s]; inside[s] = 0;
                mine = 1 << s; x = s; pc = REPLAY
           :: else ->
                s = NONE; pc = IDLE
           fi;
           moved[me] = 0; END_WINDOW;
           rs_state = 0; rs_claim = 0; rs_rby = 0;
           rl_mode = 0; rl_owner = 0; rl_claim = 0; rl_gen = 0;
           if :: s != NONE -> TOUCH(s) :: else fi
       }

    /* R5 / R6 replay slot x's journal: its committed transaction goes in place */
    :: pc == REPLAY ->
#ifdef BROKEN_NO_REPLAY
       pc = EMPTY
#else
       if
       :: jlive[x] ->
            fence_check();
            atomic {
                WROTE;
                writers++; assert(writers == 1); writers--;   /* (a) nobody else is writing */
                obj = jval[x]; END_WINDOW; pc = EMPTY
            }
       :: else -> pc = EMPTY
       fi
#endif

    /* ... and only then mark it empty (replay is idempotent until this point) */
    :: pc == EMPTY ->
#ifdef BROKEN_KEEP_JOURNAL
       pc = CHAIN
#else
       if
       :: jlive[x] ->
            fence_check();
            atomic { WROTE; jlive[x] = 0; jval[x] = 0; END_WINDOW; pc = CHAIN }
       :: else -> pc = CHAIN
       fi
#endif

    /* the dead slot may itself have been recovering others: take those over too */
    :: pc == CHAIN ->
       atomic {
           y = 0;
           do
           :: y < NH && !(slot[y].state == SRECOV && slot[y].rby < NH && (mine & (1 << slot[y].rby))) -> y++
           :: else -> break
           od;
           if
           :: y == NH -> y = 0; pc = TAKELOCK
           :: else -> rs_state = slot[y].state; rs_claim = slot[y].claim; rs_rby = slot[y].rby
           fi
       }
       if
       :: pc == CHAIN ->
            fence_check();
            atomic {
                if
                :: slot[y].state == rs_state && slot[y].claim == rs_claim && slot[y].rby == rs_rby ->
                     WROTE; slot[y].claim++; slot[y].rby = me; TOUCH(y);
                     mine = mine | (1 << y); x = y; pc = REPLAY
                :: else -> skip                  /* changed under me: look again */
                fi;
                END_WINDOW; rs_state = 0; rs_claim = 0; rs_rby = 0; y = 0
            }
       :: else
       fi

    /* every journal of the recovered slots is replayed and empty: now their locks */
    :: pc == TAKELOCK ->
       atomic {
           rl_mode = lmode; rl_owner = lowner; rl_claim = lclaim; rl_gen = lgen;
           if
           :: rl_mode == LEXCL && rl_owner < NH && (mine & (1 << rl_owner)) -> skip
           :: else -> rl_mode = 0; rl_owner = 0; rl_claim = 0; rl_gen = 0; pc = FREESLOTS
           fi
       }
       if
       :: pc == TAKELOCK ->
            fence_check();
            atomic {
                if
                :: lmode == rl_mode && lowner == rl_owner && lclaim == rl_claim && lgen == rl_gen ->
                     WROTE; lowner = me; lclaim = myclaim; lgen = rl_gen + 1; took = 1; pc = FREESLOTS
                :: else -> skip
                fi;
                END_WINDOW; rl_mode = 0; rl_owner = 0; rl_claim = 0; rl_gen = 0
            }
       :: else
       fi

    /* free the recovered slots last: until then they name me as their recoverer */
    :: pc == FREESLOTS ->
       if
       :: mine == 0 ->
            atomic {
                s = NONE; x = NONE;
                if
                :: took -> took = 0; pc = ENTER
                :: else -> pc = IDLE
                fi
            }
       :: else ->
            atomic { y = 0; do :: (mine & (1 << y)) == 0 -> y++ :: else -> break od }
            fence_check();
            atomic {
                assert(slot[y].state == SRECOV && slot[y].rby == me);
                WROTE; slot[y].state = SFREE; slot[y].rby = NONE; mine = mine & ~(1 << y);
                TOUCH(y); END_WINDOW; y = 0
            }
       fi

    /* critical section */
    :: pc == ENTER ->
       atomic {
           believes[me] = 1;
           if
           :: !broken[me] ->
                inside[me] = 1; writers++;
                assert(writers == 1);                 /* (a) one writer at a time       */
                assert(obj == committed)              /* (b) no committed update lost    */
           :: else
           fi;
           v = obj; pc = COMMIT
       }

    /* R6 commit to my journal (write + flush) ... */
    :: pc == COMMIT ->
       fence_check();
       atomic {
           WROTE; STILL_MINE;
           jval[me] = v + 1; jlive[me] = 1; committed = v + 1;
           END_WINDOW; pc = INPLACE
       }

    /* ... then write in place */
    :: pc == INPLACE ->
       fence_check();
       atomic {
           WROTE; STILL_MINE; assert(inside[me] && writers == 1);
           obj = jval[me]; v = 0;
           END_WINDOW; pc = CHECKPOINT
       }

    /* R6 before the lock goes: flush the in-place writes, retire the journal */
    :: pc == CHECKPOINT ->
#ifdef BROKEN_NO_CHECKPOINT
       pc = RELEASE
#else
       fence_check();
       atomic { WROTE; STILL_MINE; jlive[me] = 0; jval[me] = 0; END_WINDOW; pc = RELEASE }
#endif

    /* R4 release: CAW back to free, generation + 1 */
    :: pc == RELEASE ->
       atomic { writers = writers - inside[me]; inside[me] = 0; believes[me] = 0 }
       fence_check();
       atomic {
           WROTE; STILL_MINE;
           lmode = LFREE; lowner = NONE; lclaim = 0; lgen = lgen + 1;
           rounds++; END_WINDOW; pc = IDLE
       }
    od;

fence:
    /* R2, R3: self-fenced.  No further writes, ever. */
    atomic {
        fenced[me] = 1; inwin[me] = 0; sincechk[me] = 0;
        watch[me] = NONE; moved[me] = 0; waited[me] = 0;
        pc = 0; v = 0; s = 0; x = 0; y = 0; mine = 0; took = 0; rounds = 0; myclaim = 0;
        rl_mode = 0; rl_owner = 0; rl_claim = 0; rl_gen = 0; rs_state = 0; rs_claim = 0; rs_rby = 0
    }
}

#define HELD(h)         (inwin[h] && sincechk[h] >= MARGIN)
#if NH == 2
#define CAN_TICK        (!HELD(0) && !HELD(1))
#else
#define CAN_TICK        (!HELD(0) && !HELD(1) && !HELD(2))
#endif

/* ---- time --------------------------------------------------------------------------------- */

/* One tick of every host's monotonic clock.  It may not pass while a host has been in a
   fence-check window for MARGIN ticks already (assumption A1). */
active proctype Clock() {
    byte h;
    do
    :: d_step {
           CAN_TICK ->
           h = 0;
           do
           :: h < NH ->
                if :: age[h] < TFENCE -> age[h]++ :: else fi;
                if :: inwin[h] -> sincechk[h]++ :: else fi;
                if :: watch[h] != NONE && waited[h] < T -> waited[h]++ :: else fi;
                h++
           :: else -> break
           od;
           h = 0
       }
    od
}

/* (a) checked in every reachable state */
active proctype Monitor() {
    assert(MUTEX_INV)
}

init {
    atomic {
        ii = 0;
        do
        :: ii < NH -> slot[ii].rby = NONE; watch[ii] = NONE; ii++
        :: else -> break
        od;
        ii = 0;
        do
        :: ii < NH -> run Host(ii); ii++
        :: else -> break
        od;
        ii = 0
    }
}
