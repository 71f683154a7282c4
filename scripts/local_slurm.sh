#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the slurm tests and for trying
# `hydra/launcher=slurm` without a cluster (README "Running on SLURM").
#
#   sudo bash scripts/local_slurm.sh up       # install the Debian packages if missing, start, wait for an idle node
#   sudo bash scripts/local_slurm.sh status   # the daemons, the node, the queue; exit 0 only when usable
#   sudo bash scripts/local_slurm.sh down     # cancel its jobs, stop the daemons it started (its pid files)
#
# Every daemon runs as root in the foreground of its own session: munged, mariadbd (no TCP), slurmdbd,
# slurmctld, slurmd. Their state, logs and pid files live under $ARCA_SLURM_DIR (default
# /tmp/arca-slurm); /etc/slurm/slurm.conf is a symlink to the generated config, so sinfo, sbatch,
# sacct and submitit find it from any shell. `up` and `down` are idempotent; `up` after `down` starts
# a fresh cluster (job ids restart at 1). Accounting (slurmdbd) stays on: without it sacct fails and
# submitit waits forever on a job that died without output.
# Tested on Debian 12 (slurm-wlm 22.05, MariaDB 10.11). Needs root: SlurmUser=root, apt-get, /etc/slurm.
set -euo pipefail

STATE=${ARCA_SLURM_DIR:-/tmp/arca-slurm}
UP_TIMEOUT_S=${ARCA_SLURM_UP_TIMEOUT_S:-120}
SYSTEM_CONF=/etc/slurm/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd) # start order; stopped in reverse
CLUSTER=arca
PARTITION=local
NODE=$(hostname -s)
export SLURM_CONF=$STATE/etc/slurm.conf
export MYSQL_UNIX_PORT=$STATE/mysql/mysqld.sock # slurmdbd's client library reads it (no TCP)

die() {
	echo "local_slurm: $*" >&2
	exit 1
}
say() { echo "local_slurm: $*"; }

alive() { [[ -r /proc/$1/stat && $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
dead() { ! alive "$1"; }
munge_works() { munge -n -S "$STATE/munge/munge.socket" | unmunge -S "$STATE/munge/munge.socket"; }
queue_empty() { [[ -z $(squeue -h -o %A 2>/dev/null) ]]; }

pid_of() { # the pid of a daemon this script started and that still runs (same argv[0]), or nothing
	local file=$STATE/run/$1.pid pid
	[[ -s $file ]] || return 1
	pid=$(<"$file")
	alive "$pid" && [[ $(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1) == "$1" ]] && echo "$pid"
}

any_running() {
	local d
	for d in "${DAEMONS[@]}"; do pid_of "$d" >/dev/null && return 0; done
	return 1
}

install_packages() {
	local missing=0 cmd
	for cmd in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sacct; do
		command -v "$cmd" >/dev/null || missing=1
	done
	((missing)) || return 0
	command -v apt-get >/dev/null || die "missing SLURM binaries and no apt-get: install ${PACKAGES[*]}"
	say "installing ${PACKAGES[*]} (Debian packages)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${PACKAGES[@]}" >/dev/null
}

write_configs() {
	local cpus mem_mb
	cpus=$(nproc)
	mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 9 / 10 / 1024)) # 90%: slurmd drains a node that has less
	mkdir -p "$STATE"/{etc,run,log,munge,mysql,ctld,spool}
	chmod 700 "$STATE/munge"
	cat >"$STATE/etc/slurm.conf" <<EOF
# Written by scripts/local_slurm.sh: a one-node test cluster on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may restart ~15 s after its requeue instead of ~170 s.
AuthInfo=socket=$STATE/munge/munge.socket,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.daemon.pid
SlurmdPidFile=$STATE/run/slurmd.daemon.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# The munge socket for talking to slurmdbd (the default one is /run/munge; ours is not).
AccountingStoragePass=$STATE/munge/munge.socket
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
	cat >"$STATE/etc/slurmdbd.conf" <<EOF
# Written by scripts/local_slurm.sh.
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/run/slurmdbd.daemon.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
	chmod 600 "$STATE/etc/slurmdbd.conf"
}

link_system_conf() {
	if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]] && [[ $(readlink "$SYSTEM_CONF") != "$SLURM_CONF" ]]; then
		die "$SYSTEM_CONF exists and is not this script's; refusing to replace a real SLURM config"
	fi
	mkdir -p "$(dirname "$SYSTEM_CONF")"
	ln -sfn "$SLURM_CONF" "$SYSTEM_CONF"
}

start() { # start NAME CMD...: in its own session, unless this script's copy already runs
	local name=$1
	shift
	pid_of "$name" >/dev/null && return 0
	setsid nohup "$@" >>"$STATE/log/$name.out" 2>&1 </dev/null &
	echo $! >"$STATE/run/$name.pid"
}

wait_for() { # wait_for SECONDS CMD...: until CMD succeeds; fails after SECONDS
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

fail_start() {
	echo "local_slurm: $1 did not come up; the last lines of its logs:" >&2
	tail -n 20 "$STATE"/log/"$2"* >&2 || true
	exit 1
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }

up() {
	[[ $(id -u) == 0 ]] || die "run as root (it installs packages and runs the daemons as SlurmUser=root)"
	install_packages
	if ! any_running; then # a fresh cluster: no state from an earlier one
		rm -rf "$STATE"
		write_configs
		mungekey --create --keyfile="$STATE/munge/munge.key"
		mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root \
			--auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.out" 2>&1 ||
			fail_start "mariadb-install-db" mariadb-install
	fi
	link_system_conf

	start munged munged --foreground --force --key-file="$STATE/munge/munge.key" \
		--socket="$STATE/munge/munge.socket" --pid-file="$STATE/run/munged.daemon.pid" \
		--log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
	wait_for 20 munge_works || fail_start munged munged
	start mariadbd mariadbd --no-defaults --datadir="$STATE/mysql" --socket="$MYSQL_UNIX_PORT" \
		--pid-file="$STATE/run/mariadbd.daemon.pid" --skip-networking --user=root
	wait_for 30 mariadb-admin --no-defaults --socket="$MYSQL_UNIX_PORT" ping || fail_start mariadbd mariadbd
	start slurmdbd slurmdbd -D
	wait_for 30 sacctmgr -n show cluster || fail_start slurmdbd slurmdbd
	start slurmctld slurmctld -D -i
	wait_for 30 scontrol ping || fail_start slurmctld slurmctld
	start slurmd slurmd -D -N "$NODE"

	local deadline=$((SECONDS + UP_TIMEOUT_S)) state
	while state=$(node_state) && [[ ! $state =~ ^(idle|mixed|allocated) ]]; do
		if ((SECONDS >= deadline)); then
			sinfo -R >&2 || true
			fail_start "node $NODE (state '${state:-unknown}' after ${UP_TIMEOUT_S}s)" slurm
		fi
		sleep 1
	done
	say "up: node $NODE is $state (partition '$PARTITION', state in $STATE)"
}

down() {
	if pid_of slurmctld >/dev/null; then # cancel this cluster's jobs so no job process outlives it
		local jobs
		mapfile -t jobs < <(squeue -h -o %A 2>/dev/null | sort -u)
		if ((${#jobs[@]})); then
			say "cancelling jobs ${jobs[*]}"
			scancel "${jobs[@]}" 2>/dev/null || true
			wait_for 60 queue_empty || say "some jobs are still ending"
		fi
	fi
	local i pid
	for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
		if pid=$(pid_of "${DAEMONS[i]}"); then
			kill -TERM "$pid"
			wait_for 30 dead "$pid" || kill -KILL "$pid"
			say "stopped ${DAEMONS[i]} ($pid)"
		fi
		rm -f "$STATE/run/${DAEMONS[i]}.pid"
	done
	if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$SLURM_CONF" ]]; then
		rm -f "$SYSTEM_CONF"
	fi
	say "down (logs kept in $STATE/log)"
}

status() {
	local d pid stopped=0
	for d in "${DAEMONS[@]}"; do
		if pid=$(pid_of "$d"); then echo "$d: running ($pid)"; else
			echo "$d: not running"
			stopped=1
		fi
	done
	((stopped == 0)) || return 1
	sinfo -N -o "%N %P %T %c %m"
	squeue
	[[ $(node_state) =~ ^(idle|mixed|allocated) ]]
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*) die "usage: $0 up|down|status" ;;
esac
