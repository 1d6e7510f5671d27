/*
 * LunarFS lock protocol: heartbeats, compare-and-write locks, lock breaking as recovery,
 * self-fencing.  The protocol, its rules (R1 ... R7) and its assumptions (A1 ... A4) are in
 * Spec/locking.md; §6 there explains this model, what it abstracts and why that is sound.
 *
 * Check (Tests/IntegrationTests/LockModelTests.swift runs exactly this):
 *
 *     spin -a locking.pml                  (second configuration: spin -DNH=2 -DROUNDS=2 -a ...)
 *     gcc -O2 -DSAFETY -DCOLLAPSE -o pan pan.c
 *     ./pan -m100000
 *
 * Expected: "errors: 0".  Two configurations are checked:
 *     NH=3 ROUNDS=1 (REJOIN=0)   three hosts; a breaker can die mid-recovery and be recovered
 *     NH=2 ROUNDS=2 (REJOIN=1)   two hosts updating twice each; fenced hosts rejoin
 *
 * Deliberately broken variants; spin must find a violation in each (the test checks them with
 * -DNH=2 -DROUNDS=2):
 *     -DBROKEN_NO_WAIT        the breaker claims the owner's slot without waiting T       (R5)
 *     -DBROKEN_NO_REPLAY      the breaker takes the lock without replaying the journal    (R5)
 *     -DBROKEN_NO_MARGIN      hosts fence themselves at T, not T - margin                  (R3)
 *     -DBROKEN_NO_FENCE       hosts write without the fence check                          (R3)
 *     -DBROKEN_NO_CHECKPOINT  a host releases the lock with its journal still live        (R6)
 *     -DBROKEN_KEEP_JOURNAL   the breaker does not mark a replayed journal empty          (R5)
 *
 * Properties (assertions):
 *   (a) mutual exclusion: two hosts that are not fenced never both believe they hold the lock;
 *       no two hosts are ever writing the guarded object (ghost count `writers`); a host whose
 *       write passes the fence check still holds the lock it writes under.
 *   (b) no committed update is lost: whoever enters the critical section reads the value of
 *       the last transaction whose commit completed.
 *   (c) a host whose slot a breaker has claimed never writes again, anything, anywhere.
 */

#ifndef NH
#define NH 3            /* hosts; host h owns heartbeat slot h and journal h (2 or 3) */
#endif
#ifndef ROUNDS
#define ROUNDS 1        /* updates of the guarded object each host makes */
#endif
#ifndef REJOIN
#if NH == 2
#define REJOIN 1        /* how often a fenced host may join again (its slot recovered) */
#else
#define REJOIN 0        /* three hosts with rejoin: over 200 M states, too many for CI */
#endif
#endif

#define T       3       /* lock-break timeout in ticks: an observer waits this long (R5) */
#define MARGIN  1       /* A1: a write lands at most MARGIN after its fence check        */
#ifdef BROKEN_NO_MARGIN
#define TFENCE  T
#else
#define TFENCE  (T - MARGIN)    /* R3: not renewed for TFENCE: fenced               */
#endif
#ifdef BROKEN_NO_WAIT
#define WAIT    0
#else
#define WAIT    T
#endif

/* A guarded write is one atomic step.  It may land while the writer's age is below
   TFENCE + MARGIN: its fence check (age < TFENCE) passed at most MARGIN ticks earlier (A1). */
#define AGECAP  (TFENCE + MARGIN)
#ifdef BROKEN_NO_FENCE
#define CAN_WRITE       true
#else
#define CAN_WRITE       (age[me] < AGECAP)
#endif

#define NONE    15

/* heartbeat slot states (format.md §3.6) */
#define SFREE   0
#define SLIVE   1
#define SRECOV  2

/* lock modes (format.md §3.4); the model takes the lock exclusive */
#define LFREE   0
#define LEXCL   1

/* ---- on disk ------------------------------------------------------------------------------ */

typedef Slot {
    byte state;         /* SFREE / SLIVE / SRECOV                                           */
    byte claim;         /* claim generation                                                 */
    byte rby;           /* recovered by (a slot), NONE unless SRECOV                        */
};                      /* the counter is abstracted by moved[] below                       */
Slot slot[NH];

byte lmode = LFREE;     /* the lock record: mode, owner slot, owner claim.  The lock         */
byte lowner = NONE;     /* generation is left out: CAW then compares less, so it succeeds   */
byte lclaim = 0;        /* in more runs (a superset); safety here implies safety with it     */

byte obj = 0;           /* the object the lock guards, in place                             */
byte jval[NH];          /* journal of slot h: the image of the object it would replay       */
bit  jlive[NH];         /* ... committed and not yet retired                                */

/* ---- each host's own clock ------------------------------------------------------------------ */

byte age[NH];           /* ticks since the host's last successful renewal was issued (R3)   */
bit  fenced[NH];        /* the host has fenced itself: it never writes again                */
byte watch[NH];         /* slot the host (as an observer) sampled, NONE if none             */
bit  moved[NH];         /* that slot's counter changed since the sample                     */
byte waited[NH];        /* ticks since the sample, on the observer's own clock              */

/* ---- ghosts: not on disk, never read by the protocol; they state the properties ----------- */

byte committed = 0;     /* value of the last transaction whose commit completed             */
bit  broken[NH];        /* host h's slot was claimed by a breaker                           */
bit  inside[NH];        /* host h is in its critical section and its slot is not broken     */
bit  believes[NH];      /* host h believes it holds the lock exclusively                    */
byte writers = 0;       /* hosts inside, plus a breaker while it replays                   */
byte ii;                /* loop scratch, 0 between steps                                    */

#define FENCED_NOW(h)   (fenced[h] || age[h] >= AGECAP)
#define EXCL_OK(i, j)   (!(believes[i] && believes[j] && !FENCED_NOW(i) && !FENCED_NOW(j)))
#if NH == 2
#define MUTEX_INV       (EXCL_OK(0, 1) && writers <= 1)
#else
#define MUTEX_INV       (EXCL_OK(0, 1) && EXCL_OK(0, 2) && EXCL_OK(1, 2) && writers <= 1)
#endif

/* (c) every successful write by host `me` asserts this */
#define WROTE           assert(!broken[me])
/* (a) a host whose write passed its fence check still holds the lock it writes under */
#define STILL_MINE      assert(lmode == LEXCL && lowner == me && lclaim == myclaim)

/* slot s's sector changed: every observer that sampled it sees its counter move */
#define TOUCH(s)        ii = 0; do :: ii < NH -> if :: watch[ii] == s -> moved[ii] = 1 :: else fi; ii++ \
                                   :: else -> break od; ii = 0

#define CLEAR_READ      rl_mode = 0; rl_owner = 0; rl_claim = 0; rs_state = 0; rs_claim = 0; rs_rby = 0

/* ---- host --------------------------------------------------------------------------------- */

#define IDLE        0   /* may try to take the lock                                        */
#define ACQUIRE     1   /* CAW the lock record as read (rl_*) to mine                      */
#define LOOK        2   /* the lock is held: judge the owner's slot                        */
#define OBSERVE     3   /* sampled a counter; waiting T on my own clock                    */
#define REPLAY      4   /* replay the journal of slot x                                    */
#define EMPTY       5   /* mark the journal of slot x empty                                */
#define CHAIN       6   /* take over slots the dead slot was itself recovering             */
#define TAKELOCK    7   /* CAW the lock, if a recovered slot holds it, to mine             */
#define FREESLOTS   8   /* CAW the recovered slots free                                    */
#define COMMIT      9   /* critical section: read the object, commit +1 to my journal      */
#define INPLACE    10   /* write the object in place                                       */
#define CHECKPOINT 11   /* flush, then retire my journal                                   */
#define RELEASE    12   /* CAW the lock free                                               */

proctype Host(byte me) {
    byte pc = IDLE;
    byte myclaim = 1;                           /* init joined every host (R2) with claim 1 */
    byte rounds, rejoined;
    byte x = NONE;                              /* slot whose journal is being recovered   */
    byte mine = 0;                              /* bit set: slots I claimed for recovery  */
    bit  took = 0;                              /* recovery moved the lock to me          */
    byte rl_mode, rl_owner, rl_claim;           /* lock record as read                    */
    byte rs_state, rs_claim, rs_rby;            /* slot record as sampled                 */
    byte y;

end:
    do
    /* R2 renew: CAW expecting the image I last wrote.  My age restarts from when the renewal
       was issued, up to MARGIN before it lands: the earliest issue still allowed by R3. */
    :: atomic {
           CAN_WRITE ->
           if
           :: slot[me].state == SLIVE && slot[me].claim == myclaim ->
                WROTE; TOUCH(me);
                if :: age[me] >= TFENCE -> age[me] = age[me] - TFENCE + 1 :: else -> age[me] = 0 fi;
                assert(MUTEX_INV)
           :: else -> goto fence                /* my slot was claimed: fence for good */
           fi
       }

    /* R3: the host notices it has not renewed for TFENCE */
    :: atomic { age[me] >= TFENCE && !fenced[me] -> goto fence }

    /* R4 acquire: read the lock record */
    :: atomic {
           pc == IDLE && rounds < ROUNDS ->
           rl_mode = lmode; rl_owner = lowner; rl_claim = lclaim;
           if
           :: rl_mode == LFREE -> pc = ACQUIRE
           :: else -> pc = LOOK
           fi
       }

    :: atomic {
           pc == ACQUIRE && CAN_WRITE ->
           if
           :: lmode == rl_mode && lowner == rl_owner && lclaim == rl_claim ->
                WROTE; lmode = LEXCL; lowner = me; lclaim = myclaim; pc = COMMIT;
                believes[me] = 1; assert(MUTEX_INV)
           :: else -> pc = IDLE            /* lost a race: try again later */
           fi;
           CLEAR_READ
       }

    /* R4 liveness: the lock names slot rl_owner with claim rl_claim; read that slot */
    :: atomic {
           pc == LOOK ->
           y = rl_owner;
           if
           :: y != me && slot[y].state == SLIVE && slot[y].claim == rl_claim ->
                skip                                    /* the owner may be alive: watch it */
           :: y != me && slot[y].state == SRECOV && slot[y].rby != me && slot[y].rby < NH &&
              slot[slot[y].rby].state == SLIVE ->
                y = slot[y].rby                         /* being recovered: watch the recoverer */
           :: y != me && slot[y].state != SRECOV && (slot[y].state == SFREE || slot[y].claim != rl_claim) ->
                y = NONE                                /* stale: that incarnation is recovered */
           :: else -> y = NONE; CLEAR_READ; pc = IDLE
           fi;
           if
           :: pc == LOOK && y != NONE ->
                /* sample the counter, start waiting T on my own clock */
                rs_state = slot[y].state; rs_claim = slot[y].claim; rs_rby = slot[y].rby;
                watch[me] = y; moved[me] = 0; waited[me] = 0; rl_mode = 0; rl_owner = 0; rl_claim = 0;
                pc = OBSERVE
           :: pc == LOOK && y == NONE -> pc = ACQUIRE
           :: else
           fi;
           y = 0
       }

    /* the counter moved (the owner is alive), or the observer gives up: start over */
    :: atomic {
           pc == OBSERVE ->
           watch[me] = NONE; moved[me] = 0; waited[me] = 0; CLEAR_READ; pc = IDLE
       }

    /* R5 break: the counter did not change for T on my clock: claim the slot */
    :: atomic {
           pc == OBSERVE && !moved[me] && waited[me] >= WAIT && CAN_WRITE ->
           y = watch[me]; watch[me] = NONE; waited[me] = 0;
           if
           :: slot[y].state == rs_state && slot[y].claim == rs_claim && slot[y].rby == rs_rby ->
                WROTE;
                slot[y].state = SRECOV; slot[y].claim++; slot[y].rby = me; TOUCH(y);
                broken[y] = 1; writers = writers - inside[y]; inside[y] = 0;
                mine = 1 << y; x = y; pc = REPLAY
           :: else -> pc = IDLE
           fi;
           CLEAR_READ; y = 0
       }

    /* R5 replay slot x's journal: its committed transaction goes in place */
    :: atomic {
           pc == REPLAY && (!jlive[x] || CAN_WRITE) ->
#ifndef BROKEN_NO_REPLAY
           if
           :: jlive[x] ->
                WROTE; writers++; assert(writers == 1); writers--;   /* (a) nobody else writes */
                obj = jval[x]
           :: else
           fi;
#endif
           pc = EMPTY
       }

    /* ... and only then mark it empty (until then, replaying again is harmless) */
    :: atomic {
           pc == EMPTY && (!jlive[x] || CAN_WRITE) ->
#ifndef BROKEN_KEEP_JOURNAL
           if :: jlive[x] -> WROTE; jlive[x] = 0; jval[x] = 0 :: else fi;
#endif
           pc = CHAIN
       }

    /* the dead slot may have been recovering others itself: take those over too (read the
       slots, then CAW the first one found "recovering, by a slot I now recover" to mine) */
    :: atomic {
           pc == CHAIN && CAN_WRITE ->
           y = 0;
           do
           :: y < NH && !(slot[y].state == SRECOV && slot[y].rby < NH && (mine & (1 << slot[y].rby))) -> y++
           :: else -> break
           od;
           if
           :: y == NH -> x = NONE; pc = TAKELOCK
           :: else ->
                WROTE; slot[y].claim++; slot[y].rby = me; TOUCH(y);
                mine = mine | (1 << y); x = y; pc = REPLAY
           fi;
           y = 0
       }

    /* every journal of the recovered slots is replayed and empty: now their locks */
    :: atomic {
           pc == TAKELOCK && CAN_WRITE ->
           if
           :: lmode == LEXCL && lowner < NH && (mine & (1 << lowner)) ->
                WROTE; lowner = me; lclaim = myclaim; took = 1;
                believes[me] = 1; assert(MUTEX_INV)
           :: else
           fi;
           pc = FREESLOTS
       }

    /* free the recovered slots last: until then they name me as their recoverer */
    :: atomic {
           pc == FREESLOTS && mine != 0 && CAN_WRITE ->
           y = 0; do :: (mine & (1 << y)) == 0 -> y++ :: else -> break od;
           assert(slot[y].state == SRECOV && slot[y].rby == me);
           WROTE; slot[y].state = SFREE; slot[y].rby = NONE; TOUCH(y);
           mine = mine & ~(1 << y); y = 0
       }
    :: atomic {
           pc == FREESLOTS && mine == 0 ->
           if
           :: took -> took = 0; pc = COMMIT
           :: else -> pc = IDLE
           fi
       }

    /* critical section.  R6: read the object, commit the new value to my journal (write + flush) */
    :: atomic {
           pc == COMMIT && CAN_WRITE ->
           WROTE; STILL_MINE;
           inside[me] = 1; writers++;
           assert(writers == 1);                     /* (a) one writer at a time     */
           assert(MUTEX_INV);                        /* (a) one unfenced believer    */
           assert(obj == committed);                 /* (b) no committed update lost */
           jval[me] = obj + 1; jlive[me] = 1; committed = obj + 1;
           pc = INPLACE
       }

    /* ... then write in place */
    :: atomic {
           pc == INPLACE && CAN_WRITE ->
           WROTE; STILL_MINE; assert(inside[me] && writers == 1);
           obj = jval[me];
           pc = CHECKPOINT
       }

    /* R6: before the lock goes, flush the in-place writes and retire the journal */
    :: atomic {
           pc == CHECKPOINT && CAN_WRITE ->
#ifndef BROKEN_NO_CHECKPOINT
           WROTE; STILL_MINE; jlive[me] = 0; jval[me] = 0;
#endif
           pc = RELEASE
       }

    /* R4 release: CAW back to free */
    :: atomic {
           pc == RELEASE && CAN_WRITE ->
           WROTE; STILL_MINE;
           writers = writers - inside[me]; inside[me] = 0; believes[me] = 0;
           lmode = LFREE; lowner = NONE; lclaim = 0;
           rounds++; pc = IDLE
       }
    od;

fence:
    /* R2, R3: fenced.  No further writes, ever, by this incarnation.  (A crash is a host that
       takes no further step at all; spin explores every point at which that can happen.) */
    atomic {
        fenced[me] = 1; watch[me] = NONE; moved[me] = 0; waited[me] = 0;
        pc = IDLE; x = NONE; y = 0; mine = 0; took = 0; myclaim = 0;
        CLEAR_READ
    }
#if REJOIN > 0
    /* R7 rejoin: once its slot is free again (recovered), the host may join it anew, as a
       new incarnation (claim + 1).  Like any join it first recovers its own journal. */
    if
    :: rejoined < REJOIN ->
         atomic {
             slot[me].state == SFREE ->
             slot[me].state = SLIVE; slot[me].claim++; slot[me].rby = NONE; TOUCH(me);
             myclaim = slot[me].claim; age[me] = 0; fenced[me] = 0; rejoined++;
             /* ghosts: a new incarnation, not broken, believing nothing */
             broken[me] = 0; believes[me] = 0; writers = writers - inside[me]; inside[me] = 0;
             x = me; pc = REPLAY
         }
         goto end
    :: else
    fi
#endif
}

/* ---- time --------------------------------------------------------------------------------- */

/* One tick of every host's monotonic clock (A2: the clocks run at the same rate, up to what
   the margin absorbs).  Values saturate where the protocol stops telling them apart. */
active proctype Clock() {
    byte h;
end:
    do
    :: d_step {
           h = 0;
           do
           :: h < NH ->
                if :: age[h] < AGECAP -> age[h]++ :: else fi;
                if :: watch[h] != NONE && waited[h] < WAIT -> waited[h]++ :: else fi;
                h++
           :: else -> break
           od;
           h = 0
       }
    od
}

init {
    /* R2 join: every host has claimed its free slot (free -> live, claim 0 -> 1) at time 0 */
    atomic {
        ii = 0;
        do
        :: ii < NH -> slot[ii].state = SLIVE; slot[ii].claim = 1; slot[ii].rby = NONE; watch[ii] = NONE; ii++
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
