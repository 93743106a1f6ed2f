// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title EventZoo
/// @notice Emits awkward events for listener and decoder tests: values above 2**64,
/// indexed bytes32, dynamic arrays, three indexed topics, many logs in one transaction.
contract EventZoo {
    event Big(uint256 indexed id, uint256 value);
    event Tagged(bytes32 indexed tag, address indexed who, uint256[] amounts, string note);
    event Many(address indexed a, uint256 indexed b, bytes32 indexed c, bool flag);

    uint256 public nextBatchId;

    function emitBig(uint256 id, uint256 value) external {
        emit Big(id, value);
    }

    function emitTagged(bytes32 tag, address who, uint256[] calldata amounts, string calldata note) external {
        emit Tagged(tag, who, amounts, note);
    }

    function emitMany(address a, uint256 b, bytes32 c, bool flag) external {
        emit Many(a, b, c, flag);
    }

    /// @notice Emits n Big events with ids continuing across calls and
    /// value = (id + 1) * 2**64, so every value needs more than 64 bits.
    function emitBatch(uint256 n) external {
        uint256 id = nextBatchId;
        for (uint256 i = 0; i < n; i++) {
            emit Big(id, (id + 1) << 64);
            id++;
        }
        nextBatchId = id;
    }
}
