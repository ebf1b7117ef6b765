# fish completion for keyagent(1)

# Key names from the key directory, as keyagentd finds it: asking the agent would start it.
function __keyagent_keys
    set -l dir $KEYAGENT_HOME
    if test -z "$dir"
        if string match -q '/*' -- "$XDG_DATA_HOME"
            set dir $XDG_DATA_HOME/keyagent
        else
            set dir $HOME/.local/share/keyagent
        end
    end
    for f in $dir/*.key
        test -f $f; and string replace -r '^.*/(.*)\.key$' '$1' -- $f
    end
end

set -l commands init list status unlock lock recipient identity encrypt decrypt import export passwd delete install uninstall
set -l keycmds unlock lock recipient identity export passwd delete

complete -c keyagent -f
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -l version -d 'print the version'
complete -c keyagent -l debug -d 'show a traceback on a crash'
complete -c keyagent -s h -l help -d 'show help'

complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a init -d 'create a new key'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a list -d 'list keys'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a status -d 'show the agent and every key'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a unlock -d 'unlock keys for a while'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a lock -d 'lock one key or all'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a recipient -d 'print recipients'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a identity -d 'print an identity file for age-plugin-keyagent'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a encrypt -d 'encrypt a file or stdin'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a decrypt -d 'decrypt a file or stdin'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a import -d 'seal an existing age identity or SSH key'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a export -d 'export a key, passphrase-encrypted'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a passwd -d "change a key's passphrase"
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a delete -d 'delete a key for good'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a install -d 'install per-user activation files'
complete -c keyagent -n "not __fish_seen_subcommand_from $commands" -a uninstall -d 'remove per-user activation files'

complete -c keyagent -n "__fish_seen_subcommand_from $keycmds" -a '(__keyagent_keys)'
complete -c keyagent -n "__fish_seen_subcommand_from init unlock encrypt decrypt import export passwd delete" -l passphrase-fd -x -d 'read passphrases from this fd'
complete -c keyagent -n "__fish_seen_subcommand_from init" -l type -x -a 'x25519 mlkem768x25519' -d 'key type'
complete -c keyagent -n "__fish_seen_subcommand_from init import" -l label -x -d 'description'
complete -c keyagent -n "__fish_seen_subcommand_from import" -l ssh-passphrase-fd -x -d 'read the SSH key passphrase from this fd'
complete -c keyagent -n "__fish_seen_subcommand_from status" -l json -d 'machine-readable output'
complete -c keyagent -n "__fish_seen_subcommand_from unlock" -l idle-timeout -x -d 'lock after this idle time'
complete -c keyagent -n "__fish_seen_subcommand_from unlock" -s t -l max-timeout -x -d 'lock after this time at the latest'
complete -c keyagent -n "__fish_seen_subcommand_from unlock decrypt delete" -l askpass -d 'let the agent ask with its askpass program'
complete -c keyagent -n "__fish_seen_subcommand_from unlock decrypt delete" -l no-askpass -d 'never ask through the askpass program'
complete -c keyagent -n "__fish_seen_subcommand_from lock" -l all -d 'lock every key'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt" -s r -l recipient -x -d 'encrypt to a recipient'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt" -s R -l recipients-file -r -F -d 'recipients file'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt decrypt" -s k -l key -x -a '(__keyagent_keys)' -d 'key of the agent'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt" -s p -l passphrase -d 'encrypt with a passphrase'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt export" -s a -l armor -d 'ASCII armor'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt decrypt export" -s o -l output -r -F -d 'output file'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt decrypt" -s q -l quiet -d 'no progress display'
complete -c keyagent -n "__fish_seen_subcommand_from encrypt decrypt import" -F
complete -c keyagent -n "__fish_seen_subcommand_from delete" -s y -l yes -d 'do not ask for confirmation'
complete -c keyagent -n "__fish_seen_subcommand_from install" -l bindir -x -a '(__fish_complete_directories)' -d 'directory of keyagentd'
