// The --help text: enough for an admin at a rescue console with no manual.
export const HELP = `usage: imds-init [run] [options]             run the boot steps (the default)
       imds-init fingerprints [--root DIR]     print the SSH host key fingerprint block
       imds-init status [--root DIR] [--json]  what was done for this instance, and when
       imds-init metadata [PATH] [options]     fetch PATH under /latest/ and print it;
                                               no PATH: the whole meta-data tree as YAML
       imds-init --help | --version

imds-init asks the EC2-style instance metadata service who this instance is,
then runs these steps in order:
  hostname      set the hostname from meta-data/local-hostname     once per instance
  ssh-keys      add meta-data/public-keys/* to authorized_keys      once per instance
  user-data     run user-data if it starts with #! (gzip allowed)   once per instance
  fingerprints  print SSH host key fingerprints to the console     every boot
  basesystem    re-stamp the rpm basesystem install date           once per instance
A new instance-id makes every once-per-instance step due again. A failed
step is retried at the next boot, except user-data, which never runs twice
for one instance.

options:
  --root DIR          work on the system under DIR (default /); files, state
                      and commands are all taken under DIR, and the live
                      hostname is set only when DIR is /
  --config FILE       config file (default ROOT/etc/imds-init.yaml; a missing
                      default file means all defaults)
  --metadata-url URL  metadata endpoint, instead of metadata.urls from the
                      config; may be given more than once, tried in order
  --only STEP[,STEP]  run only these steps
  --skip STEP[,STEP]  run all steps but these
  --force             run once-per-instance steps again, user-data included
  --dry-run           fetch what is needed and print what each step would
                      change; change nothing, write no state and no log
  --log-level LEVEL   fatal, error, warn, info (default), debug or trace
  --json              status: print JSON

files (under ROOT):
  /etc/imds-init.yaml              configuration
  /var/lib/imds-init/              state: instance-id and each step's result
  /var/log/imds-init.log           JSON log, one line per event
  /var/log/imds-init-user-data.log output of user-data scripts

exit status:
  0  every step run succeeded
  1  at least one step failed (the others still ran), or another run on
     ROOT held ROOT/var/lib/imds-init/lock for 60 s and nothing ran
  2  usage or configuration error
  3  metadata service unreachable before the deadline (metadata.deadline_s)

examples:
  imds-init --dry-run                         what would a boot do now?
  imds-init --only ssh-keys --force           install the instance's keys again
  imds-init metadata meta-data/instance-id    ask the metadata service directly
  imds-init --root /mnt/image status          inspect an image's state
`;
