# bash completion for keyagent(1)

# Key names from the key directory, as keyagentd finds it: asking the agent would start it.
_keyagent_keys() {
    local dir=${KEYAGENT_HOME:-} f
    if [[ -z $dir ]]; then
        if [[ ${XDG_DATA_HOME:-} == /* ]]; then dir=$XDG_DATA_HOME/keyagent
        else dir=$HOME/.local/share/keyagent; fi
    fi
    for f in "$dir"/*.key; do
        [[ -f $f ]] || continue
        f=${f##*/}
        printf '%s\n' "${f%.key}"
    done
}

_keyagent() {
    local cur prev words cword
    _init_completion 2>/dev/null || {
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD-1]}
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
    }
    local commands="init list status unlock lock recipient identity encrypt decrypt import export passwd delete install uninstall"
    local cmd="" i
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            -*) ;;
            *) cmd=${words[i]}; break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "$commands --help --version --debug" -- "$cur"))
        return
    fi
    case $prev in
        -o|--output|-R|--recipients-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --bindir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        -k|--key) COMPREPLY=($(compgen -W "$(_keyagent_keys)" -- "$cur")); return ;;
        --type) COMPREPLY=($(compgen -W "x25519 mlkem768x25519" -- "$cur")); return ;;
        -r|--recipient|--label|--passphrase-fd|--idle-timeout|-t|--max-timeout) return ;;
    esac
    local opts="--help --debug"
    case $cmd in
        init) opts+=" --type --label --passphrase-fd" ;;
        status) opts+=" --json" ;;
        unlock) opts+=" --idle-timeout -t --max-timeout --passphrase-fd --askpass --no-askpass" ;;
        lock) opts+=" --all" ;;
        encrypt) opts+=" -r --recipient -R --recipients-file -k --key -p --passphrase -a --armor -o --output -q --quiet --passphrase-fd" ;;
        decrypt) opts+=" -k --key -o --output -q --quiet --passphrase-fd --askpass --no-askpass" ;;
        import) opts+=" --label --passphrase-fd --ssh-passphrase-fd" ;;
        export) opts+=" -a --armor -o --output --passphrase-fd" ;;
        passwd) opts+=" --passphrase-fd" ;;
        delete) opts+=" -y --yes --passphrase-fd --askpass --no-askpass" ;;
        install) opts+=" --bindir" ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case $cmd in
        unlock|lock|recipient|identity|export|passwd|delete)
            COMPREPLY=($(compgen -W "$(_keyagent_keys)" -- "$cur")) ;;
        encrypt|decrypt|import)
            COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
}

complete -o filenames -F _keyagent keyagent
